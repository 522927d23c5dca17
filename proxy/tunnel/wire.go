package tunnel

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"unicode/utf8"

	"github.com/quic-go/quic-go"
)

// ALPN is the TLS application protocol of the tunnel; the edge dispatches on it
// to tell tunnel connections from HTTP/3 on the same UDP socket.
const ALPN = "ztna-tunnel/1"

// Version is the protocol version sent in the hello frame and in every data
// stream header.
const Version = 1

// Connection-level application error codes (quic.Conn.CloseWithError).
const (
	CodeNoError        quic.ApplicationErrorCode = 0x000
	CodeProtocol       quic.ApplicationErrorCode = 0x101
	CodeAuthFailed     quic.ApplicationErrorCode = 0x102
	CodeGoingAway      quic.ApplicationErrorCode = 0x103
	CodeSessionRevoked quic.ApplicationErrorCode = 0x104
)

// Stream-level error codes (quic.Stream.CancelRead / CancelWrite).
const (
	StreamBadHeader     quic.StreamErrorCode = 0x201
	StreamCut           quic.StreamErrorCode = 0x301
	StreamUpstreamReset quic.StreamErrorCode = 0x302
	StreamIdle          quic.StreamErrorCode = 0x303
)

// Status is the first byte of the edge's reply on a data stream.
type Status uint8

// Reply statuses. Only StatusOK is followed by raw TCP bytes.
const (
	StatusOK          Status = 0
	StatusDenied      Status = 1
	StatusUnknownApp  Status = 2 // also for apps the user may not see, so names do not leak
	StatusUnavailable Status = 3 // the edge could not dial the app
	StatusBadHeader   Status = 4
	StatusLimit       Status = 5 // too many streams
)

func (s Status) String() string {
	switch s {
	case StatusOK:
		return "ok"
	case StatusDenied:
		return "denied"
	case StatusUnknownApp:
		return "unknown app"
	case StatusUnavailable:
		return "app unavailable"
	case StatusBadHeader:
		return "bad header"
	case StatusLimit:
		return "limit"
	default:
		return fmt.Sprintf("status %d", uint8(s))
	}
}

// Bounds of the wire format; every reader enforces them before allocating.
const (
	MaxHeader       = 68       // data stream header: 5 fixed bytes + up to 63 name bytes
	MaxAppName      = 63       // longest app name
	MaxReplyMessage = 1024     // longest reply message, in bytes
	MaxFrame        = 64 << 10 // longest control frame JSON, in bytes
)

// KindTCP is the only data stream kind in version 1.
const KindTCP = 1

var headerMagic = [2]byte{'Z', 'T'}

// ErrBadHeader is wrapped by every ReadHeader error (including short reads):
// the edge answers all of them the same way, by resetting the stream with
// StreamBadHeader.
var ErrBadHeader = errors.New("tunnel: bad stream header")

// ErrBadReply is wrapped by every ReadReply error.
var ErrBadReply = errors.New("tunnel: bad stream reply")

// ErrBadFrame is wrapped by every ReadFrame error. Errors from the underlying
// reader (io.EOF, a QUIC stream or connection error) are wrapped as well, so
// errors.Is and errors.As still find them.
var ErrBadFrame = errors.New("tunnel: bad control frame")

// ValidAppName reports whether name is a well-formed app name: 1..63 bytes of
// [a-z0-9-]. It says nothing about whether the app exists.
func ValidAppName(name string) bool {
	if len(name) == 0 || len(name) > MaxAppName {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// Header opens every data stream. The kind is always TCP in version 1.
type Header struct {
	App string
}

// WriteHeader writes h in one Write call. It refuses an invalid app name
// (wrapping ErrBadHeader) rather than send something the edge will reset.
func WriteHeader(w io.Writer, h Header) error {
	if !ValidAppName(h.App) {
		return fmt.Errorf("%w: invalid app name %q", ErrBadHeader, h.App)
	}
	buf := make([]byte, 0, 5+len(h.App))
	buf = append(buf, headerMagic[0], headerMagic[1], Version, KindTCP, byte(len(h.App)))
	buf = append(buf, h.App...)
	_, err := w.Write(buf)
	return err
}

// ReadHeader reads one data stream header, never more than MaxHeader bytes
// and never past its end. Every error wraps ErrBadHeader.
func ReadHeader(r io.Reader) (Header, error) {
	var fixed [5]byte
	if _, err := io.ReadFull(r, fixed[:]); err != nil {
		return Header{}, fmt.Errorf("%w: %w", ErrBadHeader, err)
	}
	switch {
	case fixed[0] != headerMagic[0] || fixed[1] != headerMagic[1]:
		return Header{}, fmt.Errorf("%w: bad magic", ErrBadHeader)
	case fixed[2] != Version:
		return Header{}, fmt.Errorf("%w: unsupported version %d", ErrBadHeader, fixed[2])
	case fixed[3] != KindTCP:
		return Header{}, fmt.Errorf("%w: unsupported kind %d", ErrBadHeader, fixed[3])
	case fixed[4] == 0 || fixed[4] > MaxAppName:
		return Header{}, fmt.Errorf("%w: app name length %d", ErrBadHeader, fixed[4])
	}
	name := make([]byte, fixed[4])
	if _, err := io.ReadFull(r, name); err != nil {
		return Header{}, fmt.Errorf("%w: %w", ErrBadHeader, err)
	}
	if !ValidAppName(string(name)) {
		return Header{}, fmt.Errorf("%w: invalid app name", ErrBadHeader)
	}
	return Header{App: string(name)}, nil
}

// Reply is the edge's answer on a data stream.
type Reply struct {
	Status  Status
	Message string // the decision's reason, safe to show the user
}

// WriteReply writes r in one Write call, truncating Message to
// MaxReplyMessage bytes on a rune boundary (invalid UTF-8 is replaced first).
func WriteReply(w io.Writer, r Reply) error {
	msg := truncateUTF8(strings.ToValidUTF8(r.Message, "\uFFFD"), MaxReplyMessage)
	buf := make([]byte, 3, 3+len(msg))
	buf[0] = byte(r.Status)
	binary.BigEndian.PutUint16(buf[1:3], uint16(len(msg)))
	buf = append(buf, msg...)
	_, err := w.Write(buf)
	return err
}

// ReadReply reads one reply, never more than 3+MaxReplyMessage bytes. Unknown
// status values are returned as they are (callers treat anything but StatusOK
// as a failure); invalid UTF-8 in the message is replaced. Every error wraps
// ErrBadReply.
func ReadReply(r io.Reader) (Reply, error) {
	var fixed [3]byte
	if _, err := io.ReadFull(r, fixed[:]); err != nil {
		return Reply{}, fmt.Errorf("%w: %w", ErrBadReply, err)
	}
	n := binary.BigEndian.Uint16(fixed[1:3])
	if n > MaxReplyMessage {
		return Reply{}, fmt.Errorf("%w: message length %d", ErrBadReply, n)
	}
	msg := make([]byte, n)
	if _, err := io.ReadFull(r, msg); err != nil {
		return Reply{}, fmt.Errorf("%w: %w", ErrBadReply, err)
	}
	return Reply{Status: Status(fixed[0]), Message: strings.ToValidUTF8(string(msg), "\uFFFD")}, nil
}

// truncateUTF8 cuts s to at most max bytes without splitting a rune.
func truncateUTF8(s string, max int) string {
	if len(s) <= max {
		return s
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut]
}

// Control frame types.
const (
	FrameHello   = "hello"
	FrameWelcome = "welcome"
	FrameError   = "error"
	FrameApps    = "apps"
	FrameClosed  = "closed"
	FrameBye     = "bye"
	FramePing    = "ping"
	FramePong    = "pong"
)

// Error frame codes.
const (
	ErrorUnauthenticated    = "unauthenticated"
	ErrorDeviceRequired     = "device_required"
	ErrorQuarantined        = "quarantined"
	ErrorUnsupportedVersion = "unsupported_version"
)

// Bye frame codes: why the edge ends the connection.
const (
	ByeGoingAway      = "going_away"      // drain, max connection duration: reconnect
	ByeSessionRevoked = "session_revoked" // the session or device lost its trust: do not reconnect
)

// Frame is one control stream message. Which fields are set depends on Type.
type Frame struct {
	Type    string `json:"type"` // hello, welcome, error, apps, closed, bye, ping, pong
	Version int    `json:"version,omitempty"`
	Token   string `json:"token,omitempty"` // hello only; never logged (see LogValue, String)
	Client  string `json:"client,omitempty"`
	User    string `json:"user,omitempty"`
	Email   string `json:"email,omitempty"`
	Device  string `json:"device,omitempty"`
	Apps    []App  `json:"apps,omitempty"`
	Policy  string `json:"policy,omitempty"`
	Code    string `json:"code,omitempty"`
	Message string `json:"message,omitempty"`
	Stream  int64  `json:"stream,omitempty"`
	Reason  string `json:"reason,omitempty"`
}

// App is one app the user may reach through the tunnel.
type App struct {
	Name string `json:"name"`
	Kind string `json:"kind"` // "tcp"
	// Unavailable, if set, is why the app refuses streams from this device
	// right now (its posture profile, a quarantine) and how to fix it,
	// safe to show the user. The policy opens the app to the user.
	Unavailable string `json:"unavailable,omitempty"`
}

const redacted = "REDACTED"

// LogValue keeps the bearer token out of logs.
func (f Frame) LogValue() slog.Value {
	attrs := []slog.Attr{slog.String("type", f.Type)}
	add := func(k, v string) {
		if v != "" {
			attrs = append(attrs, slog.String(k, v))
		}
	}
	if f.Version != 0 {
		attrs = append(attrs, slog.Int("version", f.Version))
	}
	if f.Token != "" {
		attrs = append(attrs, slog.String("token", redacted))
	}
	add("client", f.Client)
	add("user", f.User)
	add("email", f.Email)
	add("device", f.Device)
	if f.Apps != nil {
		names := make([]string, len(f.Apps))
		for i, a := range f.Apps {
			names[i] = a.Name
		}
		attrs = append(attrs, slog.Any("apps", names))
	}
	add("policy", f.Policy)
	add("code", f.Code)
	add("message", f.Message)
	if f.Stream != 0 {
		attrs = append(attrs, slog.Int64("stream", f.Stream))
	}
	add("reason", f.Reason)
	return slog.GroupValue(attrs...)
}

// String keeps the bearer token out of fmt output (%v, %s, %+v).
func (f Frame) String() string {
	if f.Token != "" {
		f.Token = redacted
	}
	b, err := json.Marshal(f)
	if err != nil {
		return "tunnel.Frame{" + f.Type + "}"
	}
	return string(b)
}

// WriteFrame writes f as a 4-byte big-endian length and its JSON, in one
// Write call. Frames larger than MaxFrame are refused (wrapping ErrBadFrame).
// Concurrent writers on one stream must serialise their calls.
func WriteFrame(w io.Writer, f Frame) error {
	if f.Type == "" {
		return fmt.Errorf("%w: empty type", ErrBadFrame)
	}
	body, err := json.Marshal(f)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrBadFrame, err)
	}
	if len(body) > MaxFrame {
		return fmt.Errorf("%w: %d bytes exceeds %d", ErrBadFrame, len(body), MaxFrame)
	}
	buf := make([]byte, 4, 4+len(body))
	binary.BigEndian.PutUint32(buf, uint32(len(body)))
	buf = append(buf, body...)
	_, err = w.Write(buf)
	return err
}

// ReadFrame reads one control frame, never more than 4+MaxFrame bytes and
// never past its end. Unknown JSON fields are ignored; a frame without a type
// is an error. Every error wraps ErrBadFrame (and the reader's error, if any).
func ReadFrame(r io.Reader) (Frame, error) {
	var lenBuf [4]byte
	if _, err := io.ReadFull(r, lenBuf[:]); err != nil {
		return Frame{}, fmt.Errorf("%w: %w", ErrBadFrame, err)
	}
	n := binary.BigEndian.Uint32(lenBuf[:])
	if n == 0 || n > MaxFrame {
		return Frame{}, fmt.Errorf("%w: length %d", ErrBadFrame, n)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return Frame{}, fmt.Errorf("%w: %w", ErrBadFrame, err)
	}
	var f Frame
	if err := json.Unmarshal(body, &f); err != nil {
		return Frame{}, fmt.Errorf("%w: %w", ErrBadFrame, err)
	}
	if f.Type == "" {
		return Frame{}, fmt.Errorf("%w: missing type", ErrBadFrame)
	}
	return f, nil
}
