package redistest

import "testing"

// SentinelMaster is the master set name StartSentinel monitors.
const SentinelMaster = "ztna-test"

// StartSentinel starts a Redis Sentinel (redis-server --sentinel) that
// monitors master as SentinelMaster, with a quorum of 1, and waits until it
// answers PING. Clients configured with its Addr and SentinelMaster reach
// master through it. A master with WithUser is monitored as that user; a
// non-empty password makes the Sentinel itself require it (requirepass;
// the Sentinel's PasswordFile holds it). master must not use TLS.
func StartSentinel(t testing.TB, master *Server, password ...string) *Server {
	t.Helper()
	if master.opts.tls {
		t.Fatal("redistest: StartSentinel supports only a master without TLS")
	}
	pw := ""
	if len(password) > 0 {
		pw = password[0]
	}
	if pw != "" && !plainWord(pw) {
		t.Fatal("redistest: the Sentinel password must be printable without spaces or quotes")
	}
	return Start(t, func(o *options) {
		o.sentinelOf = master.Addr()
		o.masterUser, o.masterPassword = master.opts.user, master.opts.password
		o.password = pw
	})
}
