package edge

import (
	"net"
	"syscall"
)

// raiseUDPBuffers asks for want bytes in both directions, falling back to the
// privileged SO_*BUFFORCE as quic-go does, and reports the resulting sizes
// (Linux reports twice the usable size, and quic-go compares the same value).
// ok is false when the sizes could not be read.
func raiseUDPBuffers(c *net.UDPConn, want int) (rcv, snd int, ok bool) {
	_ = c.SetReadBuffer(want)
	_ = c.SetWriteBuffer(want)
	raw, err := c.SyscallConn()
	if err != nil {
		return 0, 0, false
	}
	var rerr, serr error
	cerr := raw.Control(func(fd uintptr) {
		rcv, rerr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF)
		if rerr == nil && rcv < want {
			_ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUFFORCE, want)
			rcv, rerr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF)
		}
		snd, serr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF)
		if serr == nil && snd < want {
			_ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUFFORCE, want)
			snd, serr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF)
		}
	})
	return rcv, snd, cerr == nil && rerr == nil && serr == nil
}
