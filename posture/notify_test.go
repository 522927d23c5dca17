package posture

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// webhookSecretPath is the secret part of the test webhook URL; it must
// never appear in logs or errors.
const webhookSecretPath = "/services/T000/B000/SECRETTOKEN"

// testWebhook is a real HTTP server standing in for Slack.
type testWebhook struct {
	srv *httptest.Server
	url string

	mu       sync.Mutex
	requests []webhookRequest
	statuses []int // answered in order; 200 when exhausted
	arrived  chan struct{}
}

type webhookRequest struct {
	method, path, contentType string
	body                      []byte
}

// newTestWebhook starts a webhook server. block, if not nil, is waited on
// by every handler (or the request's end) before it answers. The leak check
// is registered first, so it runs after the server is closed.
func newTestWebhook(t *testing.T, block <-chan struct{}, statuses ...int) *testWebhook {
	t.Helper()
	opt := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opt) })
	w := &testWebhook{statuses: statuses, arrived: make(chan struct{}, 100)}
	w.srv = httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		w.mu.Lock()
		w.requests = append(w.requests, webhookRequest{r.Method, r.URL.Path, r.Header.Get("Content-Type"), body})
		status := http.StatusOK
		if len(w.statuses) > 0 {
			status, w.statuses = w.statuses[0], w.statuses[1:]
		}
		w.mu.Unlock()
		w.arrived <- struct{}{}
		if block != nil {
			select {
			case <-block:
			case <-r.Context().Done():
				return
			}
		}
		if status == http.StatusFound {
			http.Redirect(rw, r, "/elsewhere", status)
			return
		}
		rw.WriteHeader(status)
		io.WriteString(rw, "ok")
	}))
	t.Cleanup(w.srv.Close)
	w.url = w.srv.URL + webhookSecretPath
	return w
}

func (w *testWebhook) received() []webhookRequest {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]webhookRequest(nil), w.requests...)
}

// waitArrived waits until n more requests have reached the handler.
func (w *testWebhook) waitArrived(t *testing.T, n int) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for range n {
		select {
		case <-w.arrived:
		case <-timeout:
			t.Fatalf("webhook requests did not arrive; got %d", len(w.received()))
		}
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func testNotifierLogger() (*slog.Logger, *syncBuffer) {
	buf := &syncBuffer{}
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}

// fastTiming keeps retries quick and lets Close flush everything.
var fastTiming = notifierTiming{attempt: 5 * time.Second, backoff: 10 * time.Millisecond, flush: 10 * time.Second}

type slackMessage struct {
	Text   string `json:"text"`
	Blocks []struct {
		Type string `json:"type"`
		Text struct {
			Type string `json:"type"`
			Text string `json:"text"`
		} `json:"text"`
	} `json:"blocks"`
}

func decodeSlack(t *testing.T, body []byte) slackMessage {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	var m slackMessage
	if err := dec.Decode(&m); err != nil {
		t.Fatalf("body %s: %v", body, err)
	}
	if m.Text == "" || len(m.Blocks) != 1 || m.Blocks[0].Type != "section" || m.Blocks[0].Text.Type != "mrkdwn" || m.Blocks[0].Text.Text == "" {
		t.Fatalf("not a simple Slack message: %s", body)
	}
	return m
}

func TestNewNotifierURL(t *testing.T) {
	for _, u := range []string{
		"",
		"hooks.example.com/services/T000/B000/SECRETTOKEN",
		"/services/T000/B000/SECRETTOKEN",
		"ftp://hooks.example.com/services/T000/B000/SECRETTOKEN",
		"https:///services/T000/B000/SECRETTOKEN",
		"https://hooks.example.com:port/services/T000/B000/SECRETTOKEN",
		"https://hooks.example.com/services/%zz/SECRETTOKEN",
		"mailto:SECRETTOKEN@example.com",
	} {
		n, err := NewNotifier(NotifierConfig{URL: u})
		if err == nil {
			n.Close()
			t.Errorf("%q accepted", u)
			continue
		}
		if strings.Contains(err.Error(), "SECRETTOKEN") {
			t.Errorf("error quotes the URL: %v", err)
		}
	}
}

func TestNotifierDelivers(t *testing.T) {
	w := newTestWebhook(t, nil)
	logger, logs := testNotifierLogger()
	n, err := newNotifier(NotifierConfig{URL: w.url, Logger: logger}, fastTiming)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()

	e := QuarantineEntry{
		Kind: QuarantineDevice, ID: "dev-0123456789abcdef", Source: "falco", Rule: "Shell <in> container",
		Reason:   "Shell spawned <!channel> & <http://evil.example|click here> k8s_ns=<NA>",
		Fix:      "Reinstall\n*Fake line:* approved",
		Severity: SeverityCritical, At: quarantineT0, AutoRelease: true,
	}
	dev := &Device{ID: "dev-0123456789abcdef", Name: "alice's <laptop>", UserID: "alice@example.com"}
	n.Quarantined(e, dev)
	n.Released(e, "admin@example.com\n<!here>")
	n.Quarantined(QuarantineEntry{Kind: QuarantineUser, ID: "bob", Reason: "Impossible travel", Source: "admin", At: quarantineT0}, nil)
	w.waitArrived(t, 3)

	reqs := w.received()
	for _, r := range reqs {
		if r.method != http.MethodPost || r.path != webhookSecretPath || r.contentType != "application/json" {
			t.Errorf("request %s %s %q", r.method, r.path, r.contentType)
		}
		m := decodeSlack(t, r.body)
		all := m.Text + "\n" + m.Blocks[0].Text.Text
		for _, raw := range []string{"<!channel>", "<!here>", "<http", "<NA>", "<laptop>", "<in>", "& <"} {
			if strings.Contains(all, raw) {
				t.Errorf("unescaped %q in %q", raw, all)
			}
		}
	}
	q := decodeSlack(t, reqs[0].body)
	for _, want := range []string{
		"*Quarantined:* device alice's &lt;laptop&gt; (dev-0123456789abcdef) of user alice@example.com",
		"*Reason:* Shell spawned &lt;!channel&gt; &amp; &lt;http://evil.example|click here&gt; k8s_ns=&lt;NA&gt;",
		"*Fix:* Reinstall *Fake line:* approved",
		"*Source:* falco, rule Shell &lt;in&gt; container, severity Critical",
		"*Since:* 2025-03-04T10:00:00Z (released automatically",
	} {
		if !strings.Contains(q.Blocks[0].Text.Text, want) {
			t.Errorf("quarantine message lacks %q:\n%s", want, q.Blocks[0].Text.Text)
		}
	}
	if !strings.HasPrefix(q.Text, "ztna: quarantined device alice's &lt;laptop&gt; (dev-0123456789abcdef)") {
		t.Errorf("fallback text %q", q.Text)
	}
	r := decodeSlack(t, reqs[1].body)
	if !strings.Contains(r.Blocks[0].Text.Text, "*Released:* device dev-0123456789abcdef by admin@example.com &lt;!here&gt;") {
		t.Errorf("release message:\n%s", r.Blocks[0].Text.Text)
	}
	u := decodeSlack(t, reqs[2].body)
	if !strings.Contains(u.Blocks[0].Text.Text, "*Quarantined:* user bob") || !strings.Contains(u.Blocks[0].Text.Text, "an admin must release it") {
		t.Errorf("user message:\n%s", u.Blocks[0].Text.Text)
	}
	n.Close()
	if d := n.Dropped(); d != 0 {
		t.Errorf("dropped %d", d)
	}
	host := strings.TrimPrefix(w.srv.URL, "http://")
	if l := logs.String(); strings.Contains(l, "SECRETTOKEN") || !strings.Contains(l, host) {
		t.Errorf("logs must name the host %s and never the URL:\n%s", host, l)
	}
}

func TestNotifierRetries(t *testing.T) {
	cases := []struct {
		name     string
		statuses []int
		requests int
		dropped  uint64
	}{
		{"ok", []int{http.StatusNoContent}, 1, 0},
		{"5xx then ok", []int{http.StatusBadGateway, http.StatusOK}, 2, 0},
		{"429 then ok", []int{http.StatusTooManyRequests, http.StatusOK}, 2, 0},
		{"5xx twice", []int{http.StatusInternalServerError, http.StatusServiceUnavailable, http.StatusOK}, 2, 1},
		{"4xx is not retried", []int{http.StatusNotFound, http.StatusOK}, 1, 1},
		{"redirect is not followed", []int{http.StatusFound, http.StatusOK}, 1, 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w := newTestWebhook(t, nil, c.statuses...)
			logger, logs := testNotifierLogger()
			n, err := newNotifier(NotifierConfig{URL: w.url, Logger: logger}, fastTiming)
			if err != nil {
				t.Fatal(err)
			}
			n.Quarantined(deviceEntry("dev-a", "r"), nil)
			n.Close() // delivers what is queued (fastTiming's flush is long)
			if got := len(w.received()); got != c.requests {
				t.Errorf("%d requests, want %d", got, c.requests)
			}
			if got := n.Dropped(); got != c.dropped {
				t.Errorf("dropped %d, want %d", got, c.dropped)
			}
			if strings.Contains(logs.String(), "SECRETTOKEN") {
				t.Errorf("logs quote the URL:\n%s", logs)
			}
		})
	}
}

func TestNotifierTransportError(t *testing.T) {
	w := newTestWebhook(t, nil)
	url := w.url
	w.srv.Close() // nothing listens any more
	logger, logs := testNotifierLogger()
	n, err := newNotifier(NotifierConfig{URL: url, Logger: logger}, fastTiming)
	if err != nil {
		t.Fatal(err)
	}
	n.Released(deviceEntry("dev-a", "r"), "admin")
	n.Close()
	if n.Dropped() != 1 {
		t.Errorf("dropped %d", n.Dropped())
	}
	l := logs.String()
	if !strings.Contains(l, "not delivered") || strings.Contains(l, "SECRETTOKEN") || strings.Contains(l, webhookSecretPath) {
		t.Errorf("want a failure logged without the URL:\n%s", l)
	}
}

func TestNotifierQueueFull(t *testing.T) {
	block := make(chan struct{})
	w := newTestWebhook(t, block)
	t.Cleanup(func() {
		select {
		case <-block:
		default:
			close(block) // before the server's cleanup waits for handlers
		}
	})
	n, err := newNotifier(NotifierConfig{URL: w.url, QueueSize: 2}, fastTiming)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	n.Quarantined(deviceEntry("dev-a", "in flight"), nil)
	w.waitArrived(t, 1) // the goroutine is now stuck in delivery
	for range 5 {
		n.Quarantined(deviceEntry("dev-a", "queued or dropped"), nil)
	}
	if got := n.Dropped(); got != 3 {
		t.Fatalf("dropped %d, want 3 (queue of 2)", got)
	}
	close(block)
	n.Close()
	if got := len(w.received()); got != 3 {
		t.Errorf("%d delivered, want 3", got)
	}
	n.Quarantined(deviceEntry("dev-a", "after close"), nil)
	if got := n.Dropped(); got != 4 {
		t.Errorf("dropped %d after Close, want 4", got)
	}
}

// TestNotifierCloseIsBounded: a webhook that never answers holds Close for
// the flush time (2 s) and no longer; what is pending is dropped.
func TestNotifierCloseIsBounded(t *testing.T) {
	block := make(chan struct{})
	w := newTestWebhook(t, block)
	t.Cleanup(func() { close(block) })
	n, err := NewNotifier(NotifierConfig{URL: w.url})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		n.Quarantined(deviceEntry("dev-a", "r"), nil)
	}
	w.waitArrived(t, 1)
	closed := make(chan time.Duration)
	go func() {
		start := time.Now()
		n.Close()
		closed <- time.Since(start)
	}()
	select {
	case d := <-closed:
		if d < defaultNotifierTiming.flush-100*time.Millisecond {
			t.Errorf("Close returned after %s, before the flush time", d)
		}
	case <-time.After(3 * defaultNotifierTiming.flush):
		t.Fatal("Close did not return")
	}
	if got := n.Dropped(); got != 3 {
		t.Errorf("dropped %d, want 3", got)
	}
	n.Close() // idempotent
}

func TestSlackTextBounded(t *testing.T) {
	e := QuarantineEntry{
		Kind: QuarantineDevice, ID: "dev-a", Source: "falco", At: quarantineT0,
		Reason: strings.Repeat("&", MaxStringLen), Fix: strings.Repeat("<", MaxStringLen), Rule: strings.Repeat("é>", MaxStringLen/3),
	}
	w := newTestWebhook(t, nil)
	n, err := newNotifier(NotifierConfig{URL: w.url}, fastTiming)
	if err != nil {
		t.Fatal(err)
	}
	n.Quarantined(e, nil)
	n.Close()
	reqs := w.received()
	if len(reqs) != 1 {
		t.Fatalf("%d requests", len(reqs))
	}
	m := decodeSlack(t, reqs[0].body)
	if b := m.Blocks[0].Text.Text; len(b) > maxSlackText || !strings.HasSuffix(b, "…") {
		t.Errorf("block text of %d bytes, want a cut at %d", len(b), maxSlackText)
	}
	for _, s := range []string{m.Text, m.Blocks[0].Text.Text} {
		if len(s) > maxSlackText {
			t.Errorf("text of %d bytes, limit %d", len(s), maxSlackText)
		}
		for i := strings.IndexByte(s, '&'); i >= 0; i = nextAmp(s, i) {
			rest := s[i:]
			if !strings.HasPrefix(rest, "&amp;") && !strings.HasPrefix(rest, "&lt;") && !strings.HasPrefix(rest, "&gt;") {
				t.Fatalf("broken entity at %d: %.10q", i, rest)
			}
		}
	}
}

func nextAmp(s string, i int) int {
	j := strings.IndexByte(s[i+1:], '&')
	if j < 0 {
		return -1
	}
	return i + 1 + j
}
