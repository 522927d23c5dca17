package groups

import (
	"net/netip"
	"slices"
	"testing"
)

func TestCompileNetworks(t *testing.T) {
	valid := []struct {
		in   []string
		want []string
	}{
		{nil, nil},
		{[]string{"10.0.0.0/8", "192.168.1.0/24"}, []string{"10.0.0.0/8", "192.168.1.0/24"}},
		{[]string{"10.1.2.3"}, []string{"10.1.2.3/32"}},
		{[]string{"2001:db8::/32", "2001:db8::1"}, []string{"2001:db8::/32", "2001:db8::1/128"}},
		{[]string{"0.0.0.0/0", "::/0"}, []string{"0.0.0.0/0", "::/0"}},
		{[]string{"10.1.2.3/32"}, []string{"10.1.2.3/32"}},
	}
	for _, tc := range valid {
		nets, i, msg := compileNetworks(tc.in)
		if msg != "" || i != -1 {
			t.Errorf("compileNetworks(%q): unexpected error at %d: %s", tc.in, i, msg)
			continue
		}
		var got []string
		for _, p := range nets {
			got = append(got, p.String())
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("compileNetworks(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}

	invalid := []struct {
		in  []string
		i   int
		msg string
	}{
		{[]string{"10.0.0.0/8", ""}, 1, "empty"},
		{[]string{"10.1.2.3/8"}, 0, `"10.1.2.3/8" has bits set outside its /8 mask: write "10.0.0.0/8"`},
		{[]string{"2001:db8::1/32"}, 0, `"2001:db8::1/32" has bits set outside its /32 mask: write "2001:db8::/32"`},
		{[]string{"10.0.0.0/33"}, 0, `"10.0.0.0/33" is not a network: write an address or a CIDR prefix such as "10.0.0.0/8" or "2001:db8::/32"`},
		{[]string{"10.0.0/8"}, 0, `"10.0.0/8" is not a network: write an address or a CIDR prefix such as "10.0.0.0/8" or "2001:db8::/32"`},
		{[]string{"010.0.0.0/8"}, 0, `"010.0.0.0/8" is not a network: write an address or a CIDR prefix such as "10.0.0.0/8" or "2001:db8::/32"`},
		{[]string{" 10.0.0.0/8"}, 0, `" 10.0.0.0/8" is not a network: write an address or a CIDR prefix such as "10.0.0.0/8" or "2001:db8::/32"`},
		{[]string{"corp.example"}, 0, `"corp.example" is not an IP address: write an address or a CIDR prefix such as "10.0.0.0/8" or "2001:db8::/32"`},
		{[]string{"10.0.0.0-10.0.0.255"}, 0, `"10.0.0.0-10.0.0.255" is not an IP address: write an address or a CIDR prefix such as "10.0.0.0/8" or "2001:db8::/32"`},
		{[]string{"fe80::1%eth0"}, 0, `"fe80::1%eth0" has a zone: zones are not supported in networks`},
		{[]string{"fe80::%eth0/64"}, 0, `"fe80::%eth0/64" has a zone: zones are not supported in networks`},
		{[]string{"::ffff:10.0.0.0/104"}, 0, `"::ffff:10.0.0.0/104" is an IPv4-mapped IPv6 network; sources are compared as IPv4: write "10.0.0.0/8"`},
		{[]string{"::ffff:10.1.2.3"}, 0, `"::ffff:10.1.2.3" is an IPv4-mapped IPv6 network; sources are compared as IPv4: write "10.1.2.3"`},
		{[]string{"::ffff:0:0/96"}, 0, `"::ffff:0:0/96" is an IPv4-mapped IPv6 network; sources are compared as IPv4: write "0.0.0.0/0"`},
	}
	for _, tc := range invalid {
		nets, i, msg := compileNetworks(tc.in)
		if i != tc.i || msg != tc.msg || nets != nil {
			t.Errorf("compileNetworks(%q) = %v, %d, %q; want nil, %d, %q", tc.in, nets, i, msg, tc.i, tc.msg)
		}
	}
}

func TestInNetworks(t *testing.T) {
	nets, _, msg := compileNetworks([]string{"10.0.0.0/8", "192.168.1.7", "2001:db8:1::/48", "fe80::/10"})
	if msg != "" {
		t.Fatal(msg)
	}
	tests := []struct {
		addr string // "" = the invalid (unknown) address
		want bool
	}{
		{"10.0.0.0", true},
		{"10.255.255.255", true},
		{"11.0.0.0", false},
		{"9.255.255.255", false},
		{"192.168.1.7", true},
		{"192.168.1.8", false},
		{"::ffff:10.1.2.3", true}, // a dual-stack listener's view of 10.1.2.3
		{"::ffff:11.1.2.3", false},
		{"::a01:203", false}, // IPv4-compatible (deprecated) is not IPv4
		{"2001:db8:1::1", true},
		{"2001:db8:1:ffff::1", true},
		{"2001:db8:2::1", false},
		{"fe80::1%eth0", true}, // the zone does not change the address
		{"127.0.0.1", false},
		{"", false},
	}
	for _, tc := range tests {
		var a netip.Addr
		if tc.addr != "" {
			a = netip.MustParseAddr(tc.addr)
		}
		if got := inNetworks(nets, a); got != tc.want {
			t.Errorf("inNetworks(%s) = %v, want %v", tc.addr, got, tc.want)
		}
	}
	if inNetworks(nil, netip.MustParseAddr("10.0.0.1")) {
		t.Error("an empty list contains an address")
	}
	a := netip.MustParseAddr("::ffff:10.1.2.3")
	allocs := testing.AllocsPerRun(100, func() { inNetworks(nets, a) })
	if allocs != 0 {
		t.Errorf("inNetworks allocates %.1f times per call", allocs)
	}
}
