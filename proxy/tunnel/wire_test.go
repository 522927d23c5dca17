package tunnel

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestHeaderRoundTrip(t *testing.T) {
	for _, app := range []string{"a", "echo", "ssh-prod-1", strings.Repeat("z", 63)} {
		var buf bytes.Buffer
		if err := WriteHeader(&buf, Header{App: app}); err != nil {
			t.Fatalf("WriteHeader(%q): %v", app, err)
		}
		if buf.Len() > MaxHeader {
			t.Fatalf("header for %q is %d bytes, max %d", app, buf.Len(), MaxHeader)
		}
		buf.WriteString("trailing")
		h, err := ReadHeader(&buf)
		if err != nil || h.App != app {
			t.Fatalf("ReadHeader = %+v, %v; want %q", h, err, app)
		}
		if buf.String() != "trailing" {
			t.Fatalf("ReadHeader consumed past the header: left %q", buf.String())
		}
	}
}

func TestWriteHeaderRefusesBadNames(t *testing.T) {
	for _, app := range []string{"", "Echo", "a.b", "a b", "é", strings.Repeat("z", 64), "a/b"} {
		var buf bytes.Buffer
		err := WriteHeader(&buf, Header{App: app})
		if !errors.Is(err, ErrBadHeader) {
			t.Errorf("WriteHeader(%q) = %v, want ErrBadHeader", app, err)
		}
		if buf.Len() != 0 {
			t.Errorf("WriteHeader(%q) wrote %d bytes", app, buf.Len())
		}
	}
}

func TestReadHeaderRejects(t *testing.T) {
	valid := []byte{'Z', 'T', 1, 1, 4, 'e', 'c', 'h', 'o'}
	mod := func(f func(b []byte) []byte) []byte {
		return f(append([]byte(nil), valid...))
	}
	tests := []struct {
		name string
		in   []byte
	}{
		{"empty", nil},
		{"short fixed", valid[:3]},
		{"short name", valid[:7]},
		{"bad magic", mod(func(b []byte) []byte { b[0] = 'X'; return b })},
		{"bad version", mod(func(b []byte) []byte { b[2] = 2; return b })},
		{"bad kind", mod(func(b []byte) []byte { b[3] = 2; return b })},
		{"zero length", mod(func(b []byte) []byte { b[4] = 0; return b })},
		{"length 64", append([]byte{'Z', 'T', 1, 1, 64}, bytes.Repeat([]byte("a"), 64)...)},
		{"upper case", mod(func(b []byte) []byte { b[5] = 'E'; return b })},
		{"dot", mod(func(b []byte) []byte { b[6] = '.'; return b })},
		{"nul", mod(func(b []byte) []byte { b[6] = 0; return b })},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := ReadHeader(bytes.NewReader(tt.in))
			if !errors.Is(err, ErrBadHeader) {
				t.Fatalf("ReadHeader = %+v, %v; want ErrBadHeader", h, err)
			}
		})
	}
}

func TestReadHeaderNeverReadsPastBound(t *testing.T) {
	// A header claiming 63 bytes followed by lots more: at most MaxHeader read.
	in := append([]byte{'Z', 'T', 1, 1, 63}, bytes.Repeat([]byte("a"), 1000)...)
	r := &countingReader{r: bytes.NewReader(in)}
	if _, err := ReadHeader(r); err != nil {
		t.Fatal(err)
	}
	if r.n != MaxHeader {
		t.Fatalf("read %d bytes, want %d", r.n, MaxHeader)
	}
}

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

func TestReplyRoundTrip(t *testing.T) {
	long := strings.Repeat("é", 600) // 1200 bytes: must be cut on a rune boundary
	tests := []struct {
		in   Reply
		want Reply
	}{
		{Reply{StatusOK, ""}, Reply{StatusOK, ""}},
		{Reply{StatusDenied, "not in group sre"}, Reply{StatusDenied, "not in group sre"}},
		{Reply{StatusUnavailable, long}, Reply{StatusUnavailable, strings.Repeat("é", 512)}},
		{Reply{StatusLimit, "bad \xff utf8"}, Reply{StatusLimit, "bad \uFFFD utf8"}},
		{Reply{Status(9), "future"}, Reply{Status(9), "future"}},
	}
	for _, tt := range tests {
		var buf bytes.Buffer
		if err := WriteReply(&buf, tt.in); err != nil {
			t.Fatal(err)
		}
		if buf.Len() > 3+MaxReplyMessage {
			t.Fatalf("reply is %d bytes", buf.Len())
		}
		got, err := ReadReply(&buf)
		if err != nil || got != tt.want {
			t.Errorf("round trip %v = %+v, %v; want %+v", tt.in.Status, got, err, tt.want)
		}
		if !utf8.ValidString(got.Message) {
			t.Errorf("message not valid UTF-8")
		}
	}
}

func TestReadReplyRejects(t *testing.T) {
	tooLong := []byte{1, 0, 0}
	binary.BigEndian.PutUint16(tooLong[1:], MaxReplyMessage+1)
	tooLong = append(tooLong, bytes.Repeat([]byte("a"), MaxReplyMessage+1)...)
	for name, in := range map[string][]byte{
		"empty":     nil,
		"short":     {0, 0},
		"truncated": {1, 0, 5, 'a'},
		"too long":  tooLong,
	} {
		if _, err := ReadReply(bytes.NewReader(in)); !errors.Is(err, ErrBadReply) {
			t.Errorf("%s: err = %v, want ErrBadReply", name, err)
		}
	}
}

func TestFrameRoundTrip(t *testing.T) {
	frames := []Frame{
		{Type: FrameHello, Version: Version, Token: "secret-session-id", Client: "ztna/test"},
		{Type: FrameWelcome, User: "alice", Email: "alice@example.com", Device: "d1", Apps: []App{{Name: "echo", Kind: "tcp"}}, Policy: "v3"},
		{Type: FrameError, Code: ErrorUnauthenticated, Message: "log in again"},
		{Type: FrameClosed, Stream: 8, Reason: "device quarantined"},
		{Type: FrameBye, Reason: "drain"},
		{Type: FramePing},
	}
	for _, f := range frames {
		var buf bytes.Buffer
		if err := WriteFrame(&buf, f); err != nil {
			t.Fatal(err)
		}
		got, err := ReadFrame(&buf)
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprintf("%#v", got) != fmt.Sprintf("%#v", f) {
			t.Errorf("round trip:\n got %#v\nwant %#v", got, f)
		}
	}
}

func TestReadFrameRejects(t *testing.T) {
	frame := func(body string) []byte {
		b := binary.BigEndian.AppendUint32(nil, uint32(len(body)))
		return append(b, body...)
	}
	huge := binary.BigEndian.AppendUint32(nil, MaxFrame+1)
	tests := map[string][]byte{
		"empty":        nil,
		"short length": {0, 0},
		"zero length":  {0, 0, 0, 0},
		"too large":    huge,
		"truncated":    frame(`{"type":"ping"}`)[:8],
		"not json":     frame(`hello`),
		"no type":      frame(`{"user":"x"}`),
		"wrong type":   frame(`{"type":5}`),
		"array":        frame(`[]`),
	}
	for name, in := range tests {
		t.Run(name, func(t *testing.T) {
			if f, err := ReadFrame(bytes.NewReader(in)); !errors.Is(err, ErrBadFrame) {
				t.Fatalf("ReadFrame = %+v, %v; want ErrBadFrame", f, err)
			}
		})
	}
	if _, err := ReadFrame(bytes.NewReader(nil)); !errors.Is(err, io.EOF) {
		t.Errorf("clean EOF not preserved: %v", err)
	}
}

func TestReadFrameIgnoresUnknownFields(t *testing.T) {
	body := `{"type":"apps","apps":[{"name":"echo","kind":"tcp","extra":1}],"future":{"x":[1,2]}}`
	in := append(binary.BigEndian.AppendUint32(nil, uint32(len(body))), body...)
	f, err := ReadFrame(bytes.NewReader(in))
	if err != nil || f.Type != FrameApps || len(f.Apps) != 1 || f.Apps[0].Name != "echo" {
		t.Fatalf("ReadFrame = %+v, %v", f, err)
	}
}

func TestWriteFrameRefusesOversize(t *testing.T) {
	var buf bytes.Buffer
	err := WriteFrame(&buf, Frame{Type: FrameBye, Reason: strings.Repeat("x", MaxFrame)})
	if !errors.Is(err, ErrBadFrame) || buf.Len() != 0 {
		t.Fatalf("WriteFrame oversize = %v, wrote %d", err, buf.Len())
	}
}

func TestFrameNeverLogsToken(t *testing.T) {
	const token = "s3cr3t-session-id"
	f := Frame{Type: FrameHello, Version: 1, Token: token, Client: "ztna/test"}
	var logBuf bytes.Buffer
	slog.New(slog.NewTextHandler(&logBuf, nil)).Info("sent", "frame", f)
	slog.New(slog.NewJSONHandler(&logBuf, nil)).Info("sent", "frame", f)
	outputs := map[string]string{
		"slog": logBuf.String(),
		"%v":   fmt.Sprintf("%v", f),
		"%+v":  fmt.Sprintf("%+v", f),
		"%s":   fmt.Sprintf("%s", f),
	}
	for how, out := range outputs {
		if strings.Contains(out, token) {
			t.Errorf("%s output leaks the token: %s", how, out)
		}
		if !strings.Contains(out, redacted) {
			t.Errorf("%s output does not mark the token redacted: %s", how, out)
		}
	}
}
