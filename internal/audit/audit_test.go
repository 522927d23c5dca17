package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The hand-written encoder must mean exactly what encoding/json would
// write for the struct: same fields, same values, omitted when empty.
func TestEventJSONMatchesEncodingJSON(t *testing.T) {
	events := []Event{
		{Time: time.Date(2026, 11, 23, 14, 0, 0, 123456789, time.UTC), Kind: "request", Decision: "deny"},
		{Time: time.Now(), Kind: "request", User: "u-alice", Email: "alice@example.com", Session: "0123456789abcdef",
			Device: "dev-1", Posture: "fail:edr_running,edr_manager", App: "wiki", Method: "GET", Host: "wiki.example:8443", Path: "/a/b", Source: "127.0.0.1:5555",
			Decision: "allow", Rule: "employees", Reason: `allowed by rule "employees"`, Latency: 12345 * time.Nanosecond},
		{Time: time.Now(), Kind: "request", Decision: "deny", Path: "/\x00\x1f\"\\<script>&\u2028\u2029", Reason: "bad \xff utf8 \xc3",
			User: "ユーザー", Email: "line\nbreak\tand\rreturn"},
	}
	for i, e := range events {
		got := e.appendJSON(nil)
		if !bytes.HasSuffix(got, []byte("\n")) || bytes.Count(got, []byte("\n")) != 1 {
			t.Errorf("event %d: not exactly one line: %q", i, got)
		}
		want, err := json.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		var g, w map[string]any
		if err := json.Unmarshal(got, &g); err != nil {
			t.Fatalf("event %d: invalid JSON %q: %v", i, got, err)
		}
		if err := json.Unmarshal(want, &w); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(g, w) {
			t.Errorf("event %d:\n got %s\nwant %s", i, got, want)
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

func TestLogWritesEveryEventAndFlushesOnClose(t *testing.T) {
	var buf syncBuffer
	l := New(&buf, time.Hour, nil) // no timed flush: Close must flush
	for i := range 1000 {
		l.Record(Event{Time: time.Now(), Kind: "request", Decision: "allow", Path: "/" + strings.Repeat("x", i%7)})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := l.Close(ctx); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	if len(lines)+int(l.Dropped()) != 1000 {
		t.Fatalf("%d lines + %d dropped, want 1000", len(lines), l.Dropped())
	}
	for _, ln := range lines {
		var e Event
		if err := json.Unmarshal([]byte(ln), &e); err != nil || e.Decision != "allow" {
			t.Fatalf("bad line %q: %v", ln, err)
		}
	}
}

func TestLogFlushesPeriodically(t *testing.T) {
	var buf syncBuffer
	l := New(&buf, 20*time.Millisecond, nil)
	defer l.Close(context.Background())
	l.Record(Event{Time: time.Now(), Kind: "request", Decision: "deny", Reason: "not signed in"})
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(buf.String(), "not signed in") {
		if time.Now().After(deadline) {
			t.Fatal("event not flushed within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// blockingWriter never returns until released, to fill the queue.
type blockingWriter struct{ release chan struct{} }

func (w blockingWriter) Write(p []byte) (int, error) { <-w.release; return len(p), nil }

func TestRecordNeverBlocks(t *testing.T) {
	w := blockingWriter{release: make(chan struct{})}
	l := New(w, time.Millisecond, nil)
	done := make(chan struct{})
	long := strings.Repeat("p", 100000) // larger than the write buffer: the writer blocks at once
	go func() {
		for range 10000 { // more than the queue holds
			l.Record(Event{Kind: "request", Decision: "allow", Path: long})
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Record blocked on a stuck writer")
	}
	if l.Dropped() == 0 {
		t.Error("a stuck writer should make Record drop events")
	}
	close(w.release)
	if err := l.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func BenchmarkAppendJSON(b *testing.B) {
	e := Event{Time: time.Now(), Kind: "request", User: "u-alice", Email: "alice@example.com", Session: "0123456789abcdef",
		App: "wiki", Method: "GET", Host: "wiki.example:8443", Path: "/a/b", Source: "127.0.0.1:5555",
		Decision: "allow", Rule: "employees", Reason: `allowed by rule "employees"`, Latency: 12345}
	var buf []byte
	for b.Loop() {
		buf = e.appendJSON(buf[:0])
	}
}
