package tunnel

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
)

func FuzzReadHeader(f *testing.F) {
	f.Add([]byte{'Z', 'T', 1, 1, 4, 'e', 'c', 'h', 'o'})
	f.Add([]byte{'Z', 'T', 1, 1, 63})
	f.Add([]byte{'Z', 'T', 2, 1, 1, 'a'})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, in []byte) {
		r := &countingReader{r: bytes.NewReader(in)}
		h, err := ReadHeader(r)
		if r.n > MaxHeader {
			t.Fatalf("read %d bytes, bound %d", r.n, MaxHeader)
		}
		if err != nil {
			if !errors.Is(err, ErrBadHeader) {
				t.Fatalf("error does not wrap ErrBadHeader: %v", err)
			}
			return
		}
		var buf bytes.Buffer
		if err := WriteHeader(&buf, h); err != nil {
			t.Fatalf("accepted header does not write back: %v", err)
		}
		if !bytes.Equal(buf.Bytes(), in[:r.n]) {
			t.Fatalf("round trip: got %x, want %x", buf.Bytes(), in[:r.n])
		}
	})
}

func FuzzReadFrame(f *testing.F) {
	seed := func(body string) []byte {
		return append(binary.BigEndian.AppendUint32(nil, uint32(len(body))), body...)
	}
	f.Add(seed(`{"type":"hello","version":1,"token":"t","client":"ztna/1"}`))
	f.Add(seed(`{"type":"welcome","user":"u","apps":[{"name":"echo","kind":"tcp"}]}`))
	f.Add(seed(`{"type":"closed","stream":4,"reason":"quarantined"}`))
	f.Add(seed(`{}`))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, in []byte) {
		r := &countingReader{r: bytes.NewReader(in)}
		fr, err := ReadFrame(r)
		if r.n > 4+MaxFrame {
			t.Fatalf("read %d bytes, bound %d", r.n, 4+MaxFrame)
		}
		if err != nil {
			if !errors.Is(err, ErrBadFrame) {
				t.Fatalf("error does not wrap ErrBadFrame: %v", err)
			}
			return
		}
		if r.n != 4+int(binary.BigEndian.Uint32(in)) {
			t.Fatalf("read %d bytes, frame is %d", r.n, 4+binary.BigEndian.Uint32(in))
		}
		var buf bytes.Buffer
		if err := WriteFrame(&buf, fr); err != nil {
			t.Fatalf("accepted frame does not write back: %v", err)
		}
		again, err := ReadFrame(&buf)
		if err != nil {
			t.Fatalf("re-read: %v", err)
		}
		if again.String() != fr.String() {
			t.Fatalf("round trip: %s != %s", again, fr)
		}
	})
}
