// Package ratelimit bounds how often one client may do something costly
// that anyone may ask for (start a sign-in for a CLI, say): a token bucket
// per client address (golang.org/x/time/rate), with a bounded number of
// clients remembered.
//
// It never blocks and never does I/O. When it cannot remember one more
// client, it refuses: an attacker with many addresses can then slow
// everyone down, but never make the limit go away.
package ratelimit

import (
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// PerClient is a rate limit per client address. IPv6 clients are limited
// per /64, the block one host usually has to itself.
type PerClient struct {
	limit      rate.Limit
	burst      int
	idle       time.Duration // a client not seen for this long has a full bucket again
	maxClients int

	mu      sync.Mutex
	clients map[netip.Prefix]*client
}

type client struct {
	lim  *rate.Limiter
	seen time.Time
}

// New allows each client burst actions at once and then one per every,
// remembering at most maxClients clients.
func New(every time.Duration, burst, maxClients int) *PerClient {
	return &PerClient{limit: rate.Every(every), burst: burst, idle: every * time.Duration(burst),
		maxClients: maxClients, clients: map[netip.Prefix]*client{}}
}

// Allow reports whether the client at remoteAddr (host:port, as
// http.Request.RemoteAddr has it) may act at now, and takes a token if so.
// An address that does not parse is one client, "unknown".
func (p *PerClient) Allow(remoteAddr string, now time.Time) bool {
	key := clientKey(remoteAddr)
	p.mu.Lock()
	defer p.mu.Unlock()
	c := p.clients[key]
	if c == nil {
		if len(p.clients) >= p.maxClients {
			p.forgetIdle(now)
			if len(p.clients) >= p.maxClients {
				return false
			}
		}
		c = &client{lim: rate.NewLimiter(p.limit, p.burst)}
		p.clients[key] = c
	}
	c.seen = now
	return c.lim.AllowN(now, 1)
}

// forgetIdle drops the clients whose buckets have refilled: remembering
// them changes nothing.
func (p *PerClient) forgetIdle(now time.Time) {
	for k, c := range p.clients {
		if now.Sub(c.seen) >= p.idle {
			delete(p.clients, k)
		}
	}
}

// clientKey is the prefix a client is limited by: its IPv4 address, or
// its IPv6 /64.
func clientKey(remoteAddr string) netip.Prefix {
	ap, err := netip.ParseAddrPort(remoteAddr)
	var a netip.Addr
	if err == nil {
		a = ap.Addr().Unmap()
	} else if a, err = netip.ParseAddr(remoteAddr); err != nil {
		return netip.Prefix{} // unknown: one shared client
	}
	bits := 32
	if a.Is6() {
		bits = 64
	}
	pfx, _ := a.WithZone("").Prefix(bits)
	return pfx
}
