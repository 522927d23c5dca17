package edge

import (
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
)

// redirectHandler answers plain-HTTP requests with a redirect to HTTPS.
//
//   - GET and HEAD get 308 to https://host[:httpsPort]/path?query (the port is
//     omitted when it is 443). 308 rather than 301 so no client turns a
//     request into something else.
//   - Every other method gets 400: its body has already crossed the network
//     in clear text, and a redirect would teach clients that sending it over
//     HTTP works. Failing makes the misconfigured client visible.
//   - The Host header is the only client input reflected, only into Location,
//     and only after validation as a plain DNS name or IP literal (its port is
//     dropped); anything else gets 400.
func redirectHandler(httpsPort int) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			plainError(w, http.StatusBadRequest, "this address only redirects GET and HEAD to https; send requests to https directly")
			return
		}
		host, ok := redirectHost(r.Host)
		if !ok {
			plainError(w, http.StatusBadRequest, "invalid Host header")
			return
		}
		if httpsPort != 443 {
			host = net.JoinHostPort(strings.Trim(host, "[]"), strconv.Itoa(httpsPort))
		}
		// RequestURI of the parsed URL is the escaped path and query even for
		// absolute-form request targets ("GET http://other/x"), whose
		// authority is ignored here.
		uri := r.URL.RequestURI()
		if !strings.HasPrefix(uri, "/") {
			uri = "/"
		}
		w.Header().Set("Location", "https://"+host+uri)
		w.WriteHeader(http.StatusPermanentRedirect)
	})
}

// redirectHost validates a Host header value and returns the host part fit
// for a URL authority (IPv6 in brackets, lower case, port dropped).
func redirectHost(hostport string) (string, bool) {
	if hostport == "" || len(hostport) > 260 {
		return "", false
	}
	host := hostport
	if strings.HasPrefix(hostport, "[") {
		if h, _, err := net.SplitHostPort(hostport); err == nil {
			host = h
		} else if strings.HasSuffix(hostport, "]") {
			host = hostport[1 : len(hostport)-1]
		} else {
			return "", false
		}
		addr, err := netip.ParseAddr(host)
		if err != nil || !addr.Is6() || addr.Zone() != "" {
			return "", false
		}
		return "[" + addr.String() + "]", true
	}
	if i := strings.LastIndexByte(hostport, ':'); i >= 0 {
		host = hostport[:i]
		if !validPort(hostport[i+1:]) {
			return "", false
		}
	}
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	if !validHostname(host) {
		return "", false
	}
	return host, true
}

func validPort(p string) bool {
	if p == "" || len(p) > 5 {
		return false
	}
	for i := 0; i < len(p); i++ {
		if p[i] < '0' || p[i] > '9' {
			return false
		}
	}
	n, _ := strconv.Atoi(p)
	return n <= 65535
}

// validHostname accepts lower-case LDH names: labels of 1-63 letters, digits
// and hyphens, not starting or ending with a hyphen, 253 bytes at most.
// Dotted-decimal IPv4 passes this rule as well.
func validHostname(h string) bool {
	if h == "" || len(h) > 253 {
		return false
	}
	for label := range strings.SplitSeq(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// plainError writes a short fixed text response. The listeners in this
// package never show client input back in a body.
func plainError(w http.ResponseWriter, status int, msg string) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(msg + "\n"))
}
