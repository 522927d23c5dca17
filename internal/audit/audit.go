// Package audit writes one structured event per access decision: who, which
// session, which app, what was asked, the decision, the rule and the reason,
// and how long the decision took. Events are JSON lines, written by a
// background writer so the request path never waits on the log's I/O.
//
// A Log may also keep the most recent events in memory (Recent, attached
// with Keep) so the admin console can search this replica's recent
// decisions; the JSON-lines sink stays the authoritative record.
//
// It never records secrets, in the sink or in memory: sessions appear as a
// short, non-reversible reference, never as the cookie value.
package audit

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// Event is one decision.
type Event struct {
	Time     time.Time     `json:"time"`
	Kind     string        `json:"kind"` // "request", later "stream", "login", …
	User     string        `json:"user,omitempty"`
	Email    string        `json:"email,omitempty"`
	Session  string        `json:"session,omitempty"` // session reference, never the cookie value
	Device   string        `json:"device,omitempty"`
	Posture  string        `json:"posture,omitempty"` // the profile passed, or "fail:CHECK,…", or "quarantined"
	App      string        `json:"app,omitempty"`
	Method   string        `json:"method,omitempty"`
	Host     string        `json:"host,omitempty"`
	Path     string        `json:"path,omitempty"`
	Source   string        `json:"source,omitempty"` // client address; for signal events, the sender (falco, …)
	Decision string        `json:"decision"`         // "allow" or "deny"
	Rule     string        `json:"rule,omitempty"`
	Reason   string        `json:"reason,omitempty"`
	Policy   string        `json:"policy,omitempty"` // the version of the policy that decided
	Actor    string        `json:"actor,omitempty"`  // admin events: who acted ("email (user ID)", or "api")
	Latency  time.Duration `json:"latency_ns"`
	// Tunnel streams' close events: bytes client → app and app → client,
	// and how long the stream lived.
	BytesUp   int64         `json:"bytes_up,omitempty"`
	BytesDown int64         `json:"bytes_down,omitempty"`
	Duration  time.Duration `json:"duration_ns,omitempty"`
}

// Log is an asynchronous audit writer. Events go through a bounded queue; if
// the writer cannot keep up, events are counted as dropped and a warning is
// logged rather than stalling requests. Close flushes what is queued.
type Log struct {
	queue   chan Event
	done    chan struct{}
	logger  *slog.Logger
	mu      sync.Mutex
	dropped uint64
	close   sync.Once

	closeMu sync.RWMutex // Record holds it to read; Close to close the queue
	closed  bool

	recent atomic.Pointer[Recent] // nil: no in-memory copy (see Keep)
}

// New starts a writer of JSON lines to w. Flush interval is how often
// buffered lines are written out (0 → 200ms). A nil w discards events.
func New(w io.Writer, flushEvery time.Duration, logger *slog.Logger) *Log {
	if w == nil {
		w = io.Discard
	}
	if flushEvery <= 0 {
		flushEvery = 200 * time.Millisecond
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	l := &Log{queue: make(chan Event, 8192), done: make(chan struct{}), logger: logger}
	go l.run(bufio.NewWriterSize(w, 64<<10), flushEvery)
	return l
}

// Keep makes Record also add every event to r, for the console to search.
// Set it when wiring the Log; it is safe at any time, but events recorded
// before it are not kept. A nil r stops keeping events.
func (l *Log) Keep(r *Recent) { l.recent.Store(r) }

// Record queues e. It never blocks. An event recorded after Close (a
// connection still finishing while the process shuts down) is counted as
// dropped rather than crashing the process.
//
// With Keep, e also goes to the Recent ring first, whether or not the
// writer's queue has room: the console shows every decision this replica
// made recently, even those the sink had to drop (which Dropped counts and
// the log warns about).
func (l *Log) Record(e Event) {
	if r := l.recent.Load(); r != nil {
		r.Add(e)
	}
	l.closeMu.RLock()
	defer l.closeMu.RUnlock()
	if l.closed {
		l.mu.Lock()
		l.dropped++
		l.mu.Unlock()
		return
	}
	select {
	case l.queue <- e:
	default:
		l.mu.Lock()
		l.dropped++
		l.mu.Unlock()
	}
}

// Dropped reports how many events were dropped because the queue was full.
func (l *Log) Dropped() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.dropped
}

func (l *Log) run(bw *bufio.Writer, flushEvery time.Duration) {
	defer close(l.done)
	var line []byte
	t := time.NewTicker(flushEvery)
	defer t.Stop()
	var reported uint64
	for {
		select {
		case e, ok := <-l.queue:
			if !ok {
				if err := bw.Flush(); err != nil {
					l.logger.Error("audit flush failed", "err", err)
				}
				return
			}
			line = e.appendJSON(line[:0])
			if _, err := bw.Write(line); err != nil {
				l.logger.Error("audit write failed", "err", err)
			}
		case <-t.C:
			if err := bw.Flush(); err != nil {
				l.logger.Error("audit flush failed", "err", err)
			}
			if d := l.Dropped(); d != reported {
				l.logger.Warn("audit events dropped: writer too slow", "dropped_total", d)
				reported = d
			}
		}
	}
}

// Close flushes queued events and stops the writer. It waits at most until
// ctx is done. Events recorded after Close are dropped.
func (l *Log) Close(ctx context.Context) error {
	l.close.Do(func() {
		l.closeMu.Lock()
		l.closed = true
		close(l.queue)
		l.closeMu.Unlock()
	})
	select {
	case <-l.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// appendJSON appends e as one JSON line. It is written by hand because it
// runs for every request on the edge's CPU; TestEventJSONMatchesEncodingJSON
// keeps it identical in meaning to encoding/json over the struct tags.
func (e *Event) appendJSON(b []byte) []byte {
	b = append(b, `{"time":"`...)
	b = e.Time.AppendFormat(b, time.RFC3339Nano)
	b = append(b, '"')
	b = appendField(b, "kind", e.Kind, false)
	b = appendField(b, "user", e.User, true)
	b = appendField(b, "email", e.Email, true)
	b = appendField(b, "session", e.Session, true)
	b = appendField(b, "device", e.Device, true)
	b = appendField(b, "posture", e.Posture, true)
	b = appendField(b, "app", e.App, true)
	b = appendField(b, "method", e.Method, true)
	b = appendField(b, "host", e.Host, true)
	b = appendField(b, "path", e.Path, true)
	b = appendField(b, "source", e.Source, true)
	b = appendField(b, "decision", e.Decision, false)
	b = appendField(b, "rule", e.Rule, true)
	b = appendField(b, "reason", e.Reason, true)
	b = appendField(b, "policy", e.Policy, true)
	b = appendField(b, "actor", e.Actor, true)
	b = append(b, `,"latency_ns":`...)
	b = strconv.AppendInt(b, int64(e.Latency), 10)
	b = appendInt(b, "bytes_up", e.BytesUp)
	b = appendInt(b, "bytes_down", e.BytesDown)
	b = appendInt(b, "duration_ns", int64(e.Duration))
	return append(b, '}', '\n')
}

// appendInt appends a numeric field, omitted when zero.
func appendInt(b []byte, name string, v int64) []byte {
	if v == 0 {
		return b
	}
	b = append(b, ',', '"')
	b = append(b, name...)
	b = append(b, '"', ':')
	return strconv.AppendInt(b, v, 10)
}

func appendField(b []byte, name, v string, omitEmpty bool) []byte {
	if omitEmpty && v == "" {
		return b
	}
	b = append(b, ',', '"')
	b = append(b, name...)
	b = append(b, '"', ':')
	return appendString(b, v)
}

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string: quotes, backslashes and control
// characters escaped, invalid UTF-8 replaced, as encoding/json does.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c < 0x20 || c == '<' || c == '>' || c == '&':
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
		default:
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return append(b, '"')
}
