package proxy

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ztna-dev/ztna/internal/config"
)

// cfgHead is the valid top of every config below: lines 1-4, so app sections
// start on line 5.
const cfgHead = `auth_host: auth.example.com
oidc:
  issuer: https://idp.example.com
  client_id: ztna
`

// cfgWiki is a valid app section (lines 5-10 after cfgHead).
const cfgWiki = `apps:
  - name: wiki
    host: wiki.example.com
    upstream: http://127.0.0.1:8080
    rules:
      - name: everyone
`

func TestParseConfigValid(t *testing.T) {
	c, err := ParseConfig("ztna.yaml", []byte(cfgHead+cfgWiki))
	if err != nil {
		t.Fatal(err)
	}
	if c.AuthHost != "auth.example.com" || c.OIDC.Issuer != "https://idp.example.com" || c.OIDC.ClientID != "ztna" {
		t.Errorf("top level = %q %q %q", c.AuthHost, c.OIDC.Issuer, c.OIDC.ClientID)
	}
	if len(c.Apps) != 1 {
		t.Fatalf("apps = %d, want 1", len(c.Apps))
	}
	a := c.Apps[0]
	if a.Name != "wiki" || a.Host != "wiki.example.com" || a.Upstream != "http://127.0.0.1:8080" ||
		len(a.Rules) != 1 || a.Rules[0].Name != "everyone" {
		t.Errorf("app = %+v", a)
	}
	if a.PathPrefix != "/" {
		t.Errorf("path_prefix default = %q, want /", a.PathPrefix)
	}
}

func TestParseConfigNormalises(t *testing.T) {
	c, err := ParseConfig("ztna.yaml", []byte(`auth_host: Auth.Example.COM
oidc:
  issuer: http://127.0.0.1:9000
  client_id: ztna
signing:
  assertion_ttl: 90s
apps:
  - name: wiki
    host: WIKI.example.com
    path_prefix: /docs
    upstream: https://wiki.internal:8443/
    upstream_ca_file: /etc/ztna/ca.pem
    rules:
      - name: eng
        groups: [idp:eng]
        methods: [get]
        paths: [/docs/a, =/docs]
`))
	if err != nil {
		t.Fatal(err)
	}
	if c.AuthHost != "auth.example.com" || c.Apps[0].Host != "wiki.example.com" {
		t.Errorf("hosts not lower-cased: %q %q", c.AuthHost, c.Apps[0].Host)
	}
	if c.Apps[0].PathPrefix != "/docs" {
		t.Errorf("path_prefix = %q", c.Apps[0].PathPrefix)
	}
	if got := c.assertionTTL(); got != 90*time.Second {
		t.Errorf("assertionTTL = %v, want 90s", got)
	}
}

func TestParseConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want string
	}{
		{"missing auth_host", `oidc:
  issuer: https://idp.example.com
  client_id: ztna
`, "ztna.yaml:1: auth_host: required: the host name of the edge's login host"},
		{"bad auth_host", "auth_host: https://auth.example.com\n" + cfgHead[len("auth_host: auth.example.com\n"):],
			"ztna.yaml:1: auth_host: required: the host name of the edge's login host"},
		{"bad app name", cfgHead + `apps:
  - name: Wiki_1
    host: wiki.example.com
    upstream: http://127.0.0.1:8080
`, "ztna.yaml:6: apps[0].name: required: lower-case letters, digits and dashes"},
		{"missing app name", cfgHead + `apps:
  - host: wiki.example.com
    upstream: http://127.0.0.1:8080
`, "ztna.yaml:6: apps[0].name: required: lower-case letters, digits and dashes"},
		{"duplicate app name", cfgHead + cfgWiki + `  - name: wiki
    host: other.example.com
    upstream: http://127.0.0.1:8081
`, `ztna.yaml:11: apps[1].name: app "wiki" is defined twice`},
		{"bad host", cfgHead + `apps:
  - name: wiki
    host: wiki.example.com:8443
    upstream: http://127.0.0.1:8080
`, "ztna.yaml:7: apps[0].host: must be a host name like wiki.corp.example"},
		{"host with underscore", cfgHead + `apps:
  - name: wiki
    host: my_wiki.example.com
    upstream: http://127.0.0.1:8080
`, "ztna.yaml:7: apps[0].host: must be a host name like wiki.corp.example"},
		{"app host is auth host", cfgHead + `apps:
  - name: wiki
    host: AUTH.example.com
    upstream: http://127.0.0.1:8080
`, "ztna.yaml:7: apps[0].host: is the auth host; apps need their own host name"},
		{"duplicate host and prefix", cfgHead + cfgWiki + `  - name: wiki2
    host: wiki.example.com
    path_prefix: /
    upstream: http://127.0.0.1:8081
`, "ztna.yaml:13: apps[1].path_prefix: another app already serves wiki.example.com/"},
		{"duplicate host, default prefix", cfgHead + cfgWiki + `  - name: wiki2
    host: Wiki.Example.com
    upstream: http://127.0.0.1:8081
`, "ztna.yaml:11: apps[1].path_prefix: another app already serves wiki.example.com/"},
		{"path_prefix without slash", cfgHead + `apps:
  - name: wiki
    host: wiki.example.com
    path_prefix: docs
    upstream: http://127.0.0.1:8080
`, "ztna.yaml:8: apps[0].path_prefix: must be a canonical path starting with /"},
		{"path_prefix with dot-dot", cfgHead + `apps:
  - name: wiki
    host: wiki.example.com
    path_prefix: /docs/../admin
    upstream: http://127.0.0.1:8080
`, "ztna.yaml:8: apps[0].path_prefix: must be a canonical path starting with /"},
		{"path_prefix with empty segment", cfgHead + `apps:
  - name: wiki
    host: wiki.example.com
    path_prefix: //docs
    upstream: http://127.0.0.1:8080
`, "ztna.yaml:8: apps[0].path_prefix: must be a canonical path starting with /"},
		{"missing upstream", cfgHead + `apps:
  - name: wiki
    host: wiki.example.com
`, "ztna.yaml:6: apps[0].upstream: must be an http://, https:// or h2c:// URL with a host"},
		{"upstream ftp", cfgHead + `apps:
  - name: wiki
    host: wiki.example.com
    upstream: ftp://127.0.0.1:21
`, "ztna.yaml:8: apps[0].upstream: must be an http://, https:// or h2c:// URL with a host"},
		{"upstream without host", cfgHead + `apps:
  - name: wiki
    host: wiki.example.com
    upstream: http:///x
`, "ztna.yaml:8: apps[0].upstream: must be an http://, https:// or h2c:// URL with a host"},
		{"upstream with userinfo", cfgHead + `apps:
  - name: wiki
    host: wiki.example.com
    upstream: http://user:secret@127.0.0.1:8080
`, "ztna.yaml:8: apps[0].upstream: must be an http://, https:// or h2c:// URL with a host"},
		{"upstream with path", cfgHead + `apps:
  - name: wiki
    host: wiki.example.com
    upstream: http://127.0.0.1:8080/wiki
`, "ztna.yaml:8: apps[0].upstream: must not have a path: the request path is forwarded as is"},
		{"upstream_ca_file on http", cfgHead + `apps:
  - name: wiki
    host: wiki.example.com
    upstream: http://127.0.0.1:8080
    upstream_ca_file: /etc/ztna/ca.pem
`, "ztna.yaml:9: apps[0].upstream_ca_file: only applies to https upstreams"},
		{"rule action", cfgHead + cfgWiki + `      - name: maybe
        action: maybe
`, `ztna.yaml:12: apps[0].rules[1].action: must be "allow" or "deny", not "maybe"`},
		{"rule path without slash", cfgHead + `apps:
  - name: wiki
    host: wiki.example.com
    upstream: http://127.0.0.1:8080
  - name: docs
    host: docs.example.com
    upstream: http://127.0.0.1:8081
    rules:
      - name: api
        methods: [GET]
        paths:
          - /ok
          - api
`, `ztna.yaml:17: apps[1].rules[0].paths[1]: must start with "/" (or "=/" for an exact path)`},
		{"rule method", cfgHead + cfgWiki + `        methods: ["GE T"]
`, `ztna.yaml:11: apps[0].rules[0].methods[0]: "GE T" is not an HTTP method token`},
		{"rule without name", cfgHead + cfgWiki + `      - groups: [eng]
`, "ztna.yaml:11: apps[0].rules[1].name: required"},
		{"oidc issuer http", `auth_host: auth.example.com
oidc:
  issuer: http://idp.example.com
  client_id: ztna
`, "ztna.yaml:3: oidc.issuer: must be an https URL (http only on loopback)"},
		{"oidc client_id missing", `auth_host: auth.example.com
oidc:
  issuer: https://idp.example.com
`, "ztna.yaml:2: oidc.client_id: required"},
		{"oidc alg none", cfgHead + `  signing_algs:
    - ES256
    - none
`, `ztna.yaml:7: oidc.signing_algs[1]: "none" is not allowed`},
		{"oidc client_secret in file", cfgHead + `  client_secret: hunter2
`, "ztna.yaml:5: oidc.client_secret: unknown field; known fields: issuer, client_id, client_secret_file, client_secret_env, " +
			"scopes, signing_algs, claims, max_token_age, refresh_interval, sessions"},
		{"log level", cfgHead + `log:
  level: verbose
`, "ztna.yaml:6: log.level: must be debug, info, warn or error"},
		{"log format", cfgHead + `log:
  format: xml
`, "ztna.yaml:6: log.format: must be json or text"},
		{"tls half", cfgHead + `tls:
  cert_file: /etc/ztna/cert.pem
`, "ztna.yaml:5: tls: cert_file and key_file go together"},
		{"public_port", cfgHead + `public_port: 70000
`, "ztna.yaml:5: public_port: must be a port number"},
		{"negative duration", cfgHead + `signing:
  rotate_after: -1h
`, "ztna.yaml:5: signing: durations must not be negative"},
		{"unknown top-level field", cfgHead + `apps_:
  - name: wiki
`, `ztna.yaml:5: apps_: unknown field (did you mean "apps"?)`},
		{"unknown nested field", cfgHead + `apps:
  - name: wiki
    host: wiki.example.com
    upstream: http://127.0.0.1:8080
    rulez:
      - name: everyone
`, `ztna.yaml:9: apps[0].rulez: unknown field (did you mean "rules"?)`},
		{"unknown field in rule", cfgHead + cfgWiki + `        group: [eng]
`, `ztna.yaml:11: apps[0].rules[0].group: unknown field (did you mean "groups"?)`},
		{"type mismatch", cfgHead + `apps: x
`, `ztna.yaml:5: apps: must be a list, not the string "x"`},
		{"duration without unit", cfgHead + `signing:
  assertion_ttl: 300
`, `ztna.yaml:6: signing.assertion_ttl: must be a duration with a unit, like "30s" or "1h30m", not the integer "300"`},
		{"duplicate key", cfgHead + `auth_host: other.example.com
`, "ztna.yaml:5: auth_host: duplicate key (first set on line 1)"},
		{"duplicate nested key", cfgHead + `apps:
  - name: wiki
    host: wiki.example.com
    host: evil.example.com
`, "ztna.yaml:8: apps[0].host: duplicate key (first set on line 7)"},
		{"unknown posture profile", cfgHead + cfgWiki + `    posture_profile: strict
`, `ztna.yaml:11: apps[0].posture_profile: no posture profile named "strict" in posture.profiles`},
		{"bad profile hash", cfgHead + `posture:
  profiles:
    - name: strict
      edr:
        name: falcon-sensor
        allowed_sha256: [abc]
`, `ztna.yaml:10: posture.profiles[0].edr.allowed_sha256[0]: must be 64 hex digits (sha256sum of the executable)`},
		{"report interval above max_age", cfgHead + `posture:
  report_interval: 2m
  profiles:
    - name: baseline
`, `ztna.yaml:8: posture.profiles[0].max_age: must be longer than posture.report_interval (2m0s), or every device fails between reports`},
		{"min_severity", cfgHead + `signals:
  min_severity: scary
`, `ztna.yaml:6: signals.min_severity: unknown severity "scary" (want one of debug, informational, notice, warning, error, critical, alert, emergency, or low, medium, high)`},
		{"release profile unknown", cfgHead + `signals:
  release_profile: strict
`, `ztna.yaml:6: signals.release_profile: no posture profile named "strict"`},
		{"cert_ttl too short", cfgHead + `devices:
  cert_ttl: 1m
`, `ztna.yaml:6: devices.cert_ttl: must be at least 10m (agents renew when a third is left)`},
		{"unknown store backend", cfgHead + `store:
  backend: etcd
`, `ztna.yaml:6: store.backend: "etcd": want bolt or redis`},
		{"redis without addrs", cfgHead + `store:
  backend: redis
  redis:
    db: 2
`, `ztna.yaml:7: store.redis.addrs: at least one host:port is required`},
		{"stream idle timeout too short", cfgHead + `tunnel:
  stream_idle_timeout: 10ms
`, `ztna.yaml:6: tunnel.stream_idle_timeout: must be at least 1s (0 means 30m)`},
		{"two documents", cfgHead + "---\n" + cfgHead, "ztna.yaml:5: a second YAML document (---) is not allowed; keep everything in one document"},
		{"empty file", "", "ztna.yaml: file has no YAML content"},
		{"only comments", "# nothing yet\n", "ztna.yaml: file has no YAML content"},
		{"syntax error", cfgHead + "apps: [\n", "ztna.yaml:5: invalid YAML: did not find expected node content"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ParseConfig("ztna.yaml", []byte(tt.yaml))
			if err == nil {
				t.Fatalf("accepted; config %+v", c)
			}
			if err.Error() != tt.want {
				t.Errorf("error\n got: %s\nwant: %s", err, tt.want)
			}
			var fe *config.FieldError
			if !errors.As(err, &fe) {
				t.Errorf("error %T is not a *config.FieldError", err)
			}
		})
	}
}

// The listen section is validated by proxy/edge; its errors must still
// point at the listen field that is wrong.
func TestParseConfigListenError(t *testing.T) {
	_, err := ParseConfig("ztna.yaml", []byte(cfgHead+`listen:
  address: localhost
`))
	if err == nil {
		t.Fatal("accepted a listen address without a port")
	}
	want := `ztna.yaml:6: listen.address: want host:port, got "localhost": address localhost: missing port in address`
	switch got := err.Error(); {
	case got == want:
	case strings.Contains(got, "listen: listen.address: "):
		t.Errorf("got %q, want %q: the listen error names the wrong field", got, want)
	default:
		t.Errorf("error\n got: %s\nwant: %s", got, want)
	}
}

// Routes match the decoded request path, so a prefix with "%", "?" or "#"
// does not mean what it looks like: /docs%41 routes the request
// /docs%2541, not /docsA, and /docs?x=1 routes /docs%3Fx=1.
func TestParseConfigPathPrefixNeverMatches(t *testing.T) {
	for _, prefix := range []string{"/docs%41", "/docs?x=1", "/docs#top"} {
		_, err := ParseConfig("ztna.yaml", []byte(cfgHead+`apps:
  - name: wiki
    host: wiki.example.com
    path_prefix: "`+prefix+`"
    upstream: http://127.0.0.1:8080
`))
		want := "ztna.yaml:8: apps[0].path_prefix: must be a canonical path starting with /"
		switch {
		case err == nil:
			t.Errorf("path_prefix %q accepted (proxy/config.go check(): also reject %%, ? and # in path_prefix, as groups does for rule paths)", prefix)
		case err.Error() != want:
			t.Errorf("path_prefix %q: error\n got: %s\nwant: %s", prefix, err, want)
		}
	}
}

func TestParseConfigDefaults(t *testing.T) {
	tests := []struct {
		name       string
		extra      string
		port       int
		authOrigin string
		appHost    string
	}{
		{"no listen", "", 443, "https://auth.example.com", "wiki.example.com"},
		{"listen 443", "listen:\n  address: \":443\"\n", 443, "https://auth.example.com", "wiki.example.com"},
		{"listen 8443", "listen:\n  address: \":8443\"\n", 8443, "https://auth.example.com:8443", "wiki.example.com:8443"},
		{"listen host:port", "listen:\n  address: 127.0.0.1:9443\n", 9443, "https://auth.example.com:9443", "wiki.example.com:9443"},
		{"listen port 0", "listen:\n  address: 127.0.0.1:0\n", 443, "https://auth.example.com", "wiki.example.com"},
		{"public_port wins", "listen:\n  address: \":8443\"\npublic_port: 443\n", 443, "https://auth.example.com", "wiki.example.com"},
		{"public_port other", "listen:\n  address: \":443\"\npublic_port: 4443\n", 4443, "https://auth.example.com:4443", "wiki.example.com:4443"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ParseConfig("ztna.yaml", []byte(cfgHead+tt.extra+cfgWiki))
			if err != nil {
				t.Fatal(err)
			}
			if got := c.publicPort(); got != tt.port {
				t.Errorf("publicPort = %d, want %d", got, tt.port)
			}
			if got := c.AuthOrigin(); got != tt.authOrigin {
				t.Errorf("AuthOrigin = %q, want %q", got, tt.authOrigin)
			}
			if got := c.hostPort(c.Apps[0].Host); got != tt.appHost {
				t.Errorf("hostPort = %q, want %q", got, tt.appHost)
			}
		})
	}

	c, err := ParseConfig("ztna.yaml", []byte(cfgHead+cfgWiki))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.assertionTTL(); got != 5*time.Minute {
		t.Errorf("assertionTTL default = %v", got)
	}
	if got := c.signingKeyFile(); got != "/var/lib/ztna/signing-keys.json" {
		t.Errorf("signingKeyFile default = %q", got)
	}
	c.DataDir = "/srv/ztna"
	if got := c.signingKeyFile(); got != "/srv/ztna/signing-keys.json" {
		t.Errorf("signingKeyFile under data_dir = %q", got)
	}
}

// Validate (configs built in code) names the field without a file or line.
func TestValidateWithoutDoc(t *testing.T) {
	c := &Config{AuthHost: "auth.example.com"}
	c.OIDC.Issuer = "https://idp.example.com"
	c.OIDC.ClientID = "ztna"
	c.Apps = []AppConfig{{Name: "wiki", Host: "wiki.example.com", Upstream: "ftp://x"}}
	err := c.Validate()
	if err == nil || err.Error() != "apps[0].upstream: must be an http://, https:// or h2c:// URL with a host" {
		t.Errorf("Validate = %v", err)
	}
	c.Apps[0].Upstream = "http://127.0.0.1:1"
	if err := c.Validate(); err != nil {
		t.Errorf("Validate = %v", err)
	}
}
