package posture

// Chat notifications of quarantines and releases through a Slack-compatible
// incoming webhook (Slack, Mattermost, Rocket.Chat accept the same body).
// Notifying never holds up the decision that caused it: messages are
// queued and sent by one goroutine, and a full queue or a failed delivery
// drops the message and counts it. The webhook URL is a secret (whoever has
// it can post to the channel): it is never logged, only its host.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// NotifierConfig configures NewNotifier.
type NotifierConfig struct {
	// URL is the incoming-webhook URL, absolute http or https. Required;
	// treated as a secret.
	URL string
	// Client sends the requests. Nil means a client of the Notifier's own,
	// with a 5 s timeout, that does not follow redirects.
	Client *http.Client
	// Logger receives delivery failures and drops. Nil discards.
	Logger *slog.Logger
	// QueueSize bounds the messages waiting to be sent. 0 means 64.
	QueueSize int
}

// Notifier posts quarantine and release messages to a chat webhook. Its
// methods never block; Close stops it. It is safe for concurrent use.
type Notifier struct {
	url          string // secret: never logged or put in an error
	host         string // what logs say instead
	client       *http.Client
	ownTransport *http.Transport // closed by Close when the client is ours
	logger       *slog.Logger
	timing       notifierTiming

	queue chan notifyMessage
	// ctx is cancelled when the flush after Close runs out of time; every
	// delivery uses it.
	ctx    context.Context
	cancel context.CancelFunc
	stop   chan struct{}
	done   chan struct{}

	mu        sync.RWMutex // closed vs enqueue, so nothing is queued after Close
	closed    bool
	closeOnce sync.Once

	dropped atomic.Uint64
}

type notifierTiming struct {
	attempt time.Duration // one POST, response included
	backoff time.Duration // before the one retry
	flush   time.Duration // how long Close keeps delivering
}

var defaultNotifierTiming = notifierTiming{attempt: 5 * time.Second, backoff: 500 * time.Millisecond, flush: 2 * time.Second}

const (
	defaultNotifyQueue = 64
	// maxNotifyResponse bounds the response body read (and discarded) so
	// the connection can be reused.
	maxNotifyResponse = 64 << 10
	// maxSlackText is Slack's limit on a section block's text.
	maxSlackText = 3000
)

type notifyMessage struct {
	body []byte
	what string // for logs, e.g. "quarantine of device dev-…"
}

// NewNotifier checks c and starts the Notifier's goroutine.
func NewNotifier(c NotifierConfig) (*Notifier, error) {
	return newNotifier(c, defaultNotifierTiming)
}

func newNotifier(c NotifierConfig, timing notifierTiming) (*Notifier, error) {
	// Errors never include the URL or url.Parse's error, which quotes it.
	u, err := url.Parse(c.URL)
	if err != nil {
		return nil, errors.New("posture: notifier webhook URL does not parse")
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Opaque != "" {
		return nil, errors.New("posture: notifier webhook URL must be an absolute http or https URL")
	}
	n := &Notifier{
		url:    c.URL,
		host:   u.Host,
		client: c.Client,
		logger: c.Logger,
		timing: timing,
		stop:   make(chan struct{}),
		done:   make(chan struct{}),
	}
	if n.logger == nil {
		n.logger = slog.New(slog.DiscardHandler)
	}
	if n.client == nil {
		n.ownTransport = http.DefaultTransport.(*http.Transport).Clone()
		n.client = &http.Client{
			Transport: n.ownTransport,
			Timeout:   timing.attempt,
			// A webhook that redirects is misconfigured; following it would
			// also turn the POST into a GET.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	size := c.QueueSize
	if size <= 0 {
		size = defaultNotifyQueue
	}
	n.queue = make(chan notifyMessage, size)
	n.ctx, n.cancel = context.WithCancel(context.Background())
	go n.run()
	return n, nil
}

// Quarantined queues a message saying e's subject was isolated. device,
// if not nil, adds the device's name and owner.
func (n *Notifier) Quarantined(e QuarantineEntry, device *Device) {
	var lines []string
	subject := subjectText(e, device)
	lines = append(lines, "*Quarantined:* "+subject)
	lines = append(lines, "*Reason:* "+slackEscape(e.Reason))
	if e.Fix != "" {
		lines = append(lines, "*Fix:* "+slackEscape(e.Fix))
	}
	src := "*Source:* " + slackEscape(orUnknown(e.Source))
	if e.Rule != "" {
		src += ", rule " + slackEscape(e.Rule)
	}
	src += ", severity " + e.Severity.String()
	lines = append(lines, src)
	since := "*Since:* " + e.At.UTC().Format(time.RFC3339)
	if e.AutoRelease {
		since += " (released automatically by the next passing posture report)"
	} else {
		since += " (an admin must release it)"
	}
	lines = append(lines, since)
	text := "ztna: quarantined " + subject + ": " + slackEscape(e.Reason)
	n.enqueue(slackBody(text, lines), "quarantine of "+e.Kind+" "+e.ID)
}

// Released queues a message saying e's subject was released by by.
func (n *Notifier) Released(e QuarantineEntry, by string) {
	subject := subjectText(e, nil)
	byText := slackEscape(orUnknown(cleanReason(by)))
	lines := []string{"*Released:* " + subject + " by " + byText}
	if !e.At.IsZero() {
		lines = append(lines, "*Quarantined since:* "+e.At.UTC().Format(time.RFC3339))
	}
	if e.Reason != "" {
		lines = append(lines, "*Reason was:* "+slackEscape(e.Reason))
	}
	text := "ztna: released " + subject + " (by " + byText + ")"
	n.enqueue(slackBody(text, lines), "release of "+e.Kind+" "+e.ID)
}

// Dropped returns how many messages were dropped because the queue was
// full, delivery failed (after the retry), or the Notifier was closed.
func (n *Notifier) Dropped() uint64 { return n.dropped.Load() }

// Close stops the Notifier: messages queued later are dropped, queued ones
// are still delivered for at most 2 s, then the rest are dropped and any
// delivery in flight is cancelled. It returns when the goroutine has
// stopped, and is idempotent.
func (n *Notifier) Close() {
	n.closeOnce.Do(func() {
		n.mu.Lock()
		n.closed = true
		n.mu.Unlock()
		close(n.stop)
		deadline := time.AfterFunc(n.timing.flush, n.cancel)
		<-n.done
		deadline.Stop()
		n.cancel()
		if n.ownTransport != nil {
			n.ownTransport.CloseIdleConnections()
		}
	})
}

func (n *Notifier) enqueue(body []byte, what string) {
	n.mu.RLock()
	defer n.mu.RUnlock()
	if n.closed {
		n.dropped.Add(1)
		return
	}
	select {
	case n.queue <- notifyMessage{body: body, what: what}:
	default:
		n.dropped.Add(1)
		n.logger.Warn("notification queue full; message dropped", "webhook_host", n.host, "message", what)
	}
}

func (n *Notifier) run() {
	defer close(n.done)
	for {
		select {
		case m := <-n.queue:
			n.send(m)
		case <-n.stop:
			// Nothing is queued after stop is closed: drain what is there,
			// delivering until the flush deadline cancels n.ctx.
			for {
				select {
				case m := <-n.queue:
					n.send(m)
				default:
					return
				}
			}
		}
	}
}

func (n *Notifier) send(m notifyMessage) {
	if n.ctx.Err() != nil {
		n.dropped.Add(1)
		return
	}
	retry, err := n.post(m.body)
	if err != nil && retry && n.wait(n.timing.backoff) {
		_, err = n.post(m.body)
	}
	if err == nil {
		n.logger.Debug("notification delivered", "webhook_host", n.host, "message", m.what)
		return
	}
	n.dropped.Add(1)
	n.logger.Warn("notification not delivered; dropped", "webhook_host", n.host, "message", m.what, "err", err)
}

// wait sleeps for d unless n.ctx ends first; it reports whether it slept.
func (n *Notifier) wait(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-n.ctx.Done():
		return false
	}
}

// post sends one request. retry says whether a second attempt may help
// (transport error, 5xx, 429).
func (n *Notifier) post(body []byte) (retry bool, err error) {
	ctx, cancel := context.WithTimeout(n.ctx, n.timing.attempt)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, n.url, bytes.NewReader(body))
	if err != nil {
		return false, errors.New("cannot build the request") // the URL was checked; never quote it
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := n.client.Do(req)
	if err != nil {
		return true, redactURLError(err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxNotifyResponse))
	resp.Body.Close()
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return false, nil
	case resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests:
		return true, fmt.Errorf("webhook answered %s", resp.Status)
	default:
		return false, fmt.Errorf("webhook answered %s", resp.Status)
	}
}

// redactURLError drops the URL a *url.Error quotes.
func redactURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return fmt.Errorf("%s webhook: %w", ue.Op, ue.Err)
	}
	return err
}

// subjectText describes the subject in mrkdwn, escaped.
func subjectText(e QuarantineEntry, device *Device) string {
	if e.Kind == QuarantineUser {
		return "user " + slackEscape(e.ID)
	}
	if device == nil || device.ID != e.ID {
		return "device " + slackEscape(e.ID)
	}
	s := "device " + slackEscape(cleanReason(device.Name)) + " (" + slackEscape(e.ID) + ")"
	if device.UserID != "" {
		s += " of user " + slackEscape(cleanReason(device.UserID))
	}
	return s
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// slackEscape makes untrusted text literal in Slack mrkdwn: &, < and >
// are the only characters Slack asks to escape (< starts links and
// mentions such as <!channel>). Characters that are not printable become
// spaces, so a line break cannot fake a line of the message.
func slackEscape(s string) string {
	s = cleanSignalText(s)
	if !strings.ContainsAny(s, "&<>") {
		return s
	}
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(s)
}

// slackBody encodes the incoming-webhook JSON: the fallback text and one
// section block with the lines.
func slackBody(text string, lines []string) []byte {
	type textObject struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	type block struct {
		Type string     `json:"type"`
		Text textObject `json:"text"`
	}
	msg := struct {
		Text   string  `json:"text"`
		Blocks []block `json:"blocks"`
	}{
		Text:   slackTruncate(text),
		Blocks: []block{{Type: "section", Text: textObject{Type: "mrkdwn", Text: slackTruncate(strings.Join(lines, "\n"))}}},
	}
	b, err := json.Marshal(msg)
	if err != nil {
		panic(err) // only strings: cannot fail
	}
	return b
}

// slackTruncate cuts escaped text to maxSlackText bytes (so at most as many
// characters) without splitting a character or an entity such as &amp;.
func slackTruncate(s string) string {
	if len(s) <= maxSlackText {
		return s
	}
	s = truncateUTF8(s, maxSlackText-len("…"))
	if i := strings.LastIndexByte(s, '&'); i >= 0 && !strings.Contains(s[i:], ";") {
		s = s[:i]
	}
	return s + "…"
}
