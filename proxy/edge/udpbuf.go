package edge

import (
	"log/slog"
	"net"
	"os"
	"sync"
)

// quicBufferSize is what quic-go asks the kernel for on its UDP socket
// (quic-go sys_conn_buffers.go, desiredBufferSize).
const quicBufferSize = 7 << 20

// quicBufferEnv silences quic-go's own warning, which goes to the standard
// library logger as unstructured text.
const quicBufferEnv = "QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING"

// udpBufferWarnOnce makes the warning once per process, like quic-go's.
var udpBufferWarnOnce sync.Once

// checkUDPBuffers raises the socket buffers the way quic-go would and, if the
// kernel refuses, logs once at info level with the fix, then turns off
// quic-go's duplicate stdlib-log line (only if the operator has not set the
// variable). HTTP/3 works with small buffers; it is only slower under load.
func checkUDPBuffers(c *net.UDPConn, want int, once *sync.Once, logger *slog.Logger) {
	if rcv, snd, ok := raiseUDPBuffers(c, want); ok {
		warnUDPBuffers(rcv, snd, want, once, logger)
	}
}

func warnUDPBuffers(rcv, snd, want int, once *sync.Once, logger *slog.Logger) {
	if rcv >= want && snd >= want {
		return
	}
	once.Do(func() {
		logger.Info("edge: UDP socket buffers are smaller than HTTP/3 wants; HTTP/3 works but may be slower under load",
			"receive_bytes", rcv, "send_bytes", snd, "wanted_bytes", want,
			"fix", "sysctl -w net.core.rmem_max=7500000 net.core.wmem_max=7500000",
			"see", "https://github.com/quic-go/quic-go/wiki/UDP-Buffer-Sizes")
		if _, set := os.LookupEnv(quicBufferEnv); !set {
			_ = os.Setenv(quicBufferEnv, "true")
		}
	})
}
