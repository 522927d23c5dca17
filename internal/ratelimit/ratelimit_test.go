package ratelimit

import (
	"fmt"
	"testing"
	"time"
)

func TestPerClient(t *testing.T) {
	t0 := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	p := New(time.Second, 3, 100)
	for i := range 3 {
		if !p.Allow("192.0.2.1:4000", t0) {
			t.Fatalf("action %d within the burst refused", i+1)
		}
	}
	if p.Allow("192.0.2.1:4001", t0) {
		t.Fatal("a fourth action at once allowed (another port is the same client)")
	}
	if !p.Allow("192.0.2.2:4000", t0) {
		t.Fatal("another client is limited by the first")
	}
	if p.Allow("192.0.2.1:4000", t0.Add(999*time.Millisecond)) {
		t.Fatal("allowed before a token came back")
	}
	if !p.Allow("192.0.2.1:4000", t0.Add(2*time.Second)) {
		t.Fatal("refused after a token came back")
	}
	// IPv6: one /64 is one client; the next /64 another.
	for i := range 3 {
		if !p.Allow(fmt.Sprintf("[2001:db8:1:2::%x]:443", i+1), t0) {
			t.Fatalf("v6 action %d refused", i+1)
		}
	}
	if p.Allow("[2001:db8:1:2:ffff::9]:443", t0) {
		t.Fatal("another address of the same /64 escaped the limit")
	}
	if !p.Allow("[2001:db8:1:3::1]:443", t0) {
		t.Fatal("the next /64 is limited by the first")
	}
	// An IPv4-mapped address is the IPv4 client: it takes the one token
	// left, and then the plain address has none.
	if !p.Allow("[::ffff:192.0.2.1]:4000", t0.Add(2*time.Second)) {
		t.Fatal("the IPv4-mapped address was refused the token left")
	}
	if p.Allow("192.0.2.1:4000", t0.Add(2*time.Second)) {
		t.Fatal("an IPv4-mapped address did not count against its IPv4 client")
	}
	// Unparseable addresses share one bucket.
	for range 3 {
		p.Allow("garbage", t0)
	}
	if p.Allow("other garbage", t0) {
		t.Fatal("unparseable addresses are not limited together")
	}
}

func TestPerClientBoundedMemory(t *testing.T) {
	t0 := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	p := New(time.Second, 2, 10)
	for i := range 10 {
		if !p.Allow(fmt.Sprintf("198.51.100.%d:1", i), t0) {
			t.Fatalf("client %d refused", i)
		}
	}
	// Full, and nobody idle: a new client is refused, not let through.
	if p.Allow("203.0.113.1:1", t0.Add(time.Second)) {
		t.Fatal("a client beyond the bound was allowed while every remembered one was active")
	}
	if len(p.clients) != 10 {
		t.Fatalf("%d clients remembered, want at most 10", len(p.clients))
	}
	// Once the others' buckets have refilled, they are forgotten.
	if !p.Allow("203.0.113.1:1", t0.Add(3*time.Second)) {
		t.Fatal("a new client refused after the others went idle")
	}
	if len(p.clients) != 1 {
		t.Fatalf("%d clients remembered after the sweep, want 1", len(p.clients))
	}
}
