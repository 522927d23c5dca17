package redistest

import "testing"

// SentinelMaster is the master set name StartSentinel monitors.
const SentinelMaster = "ztna-test"

// StartSentinel starts a Redis Sentinel (redis-server --sentinel) that
// monitors master as SentinelMaster, with a quorum of 1, and waits until it
// answers PING. Clients configured with its Addr and SentinelMaster reach
// master through it. master must not use WithUser or TLS.
func StartSentinel(t testing.TB, master *Server) *Server {
	t.Helper()
	if master.opts.user != "" || master.opts.tls {
		t.Fatal("redistest: StartSentinel supports only a master without ACL user and TLS")
	}
	return Start(t, func(o *options) { o.sentinelOf = master.Addr() })
}
