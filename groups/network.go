package groups

import (
	"fmt"
	"net/netip"
	"strings"
)

// compileNetworks parses the entries of Rule.Networks: CIDR prefixes
// ("10.0.0.0/8", "2001:db8::/32") and bare addresses (a /32 or /128). On
// error, i is the index of the bad entry and msg says what is wrong; on
// success i is -1.
//
// Entries must be written the way they will be matched: no host bits
// outside the mask ("10.1.2.3/8" would read as if it meant one host), no
// zones, and no IPv4-mapped IPv6 forms, because inNetworks compares the
// unmapped address and such an entry would never match.
func compileNetworks(cidrs []string) (nets []netip.Prefix, i int, msg string) {
	if len(cidrs) == 0 {
		return nil, -1, ""
	}
	nets = make([]netip.Prefix, 0, len(cidrs))
	for i, s := range cidrs {
		p, msg := parseNetwork(s)
		if msg != "" {
			return nil, i, msg
		}
		nets = append(nets, p)
	}
	return nets, -1, ""
}

func parseNetwork(s string) (netip.Prefix, string) {
	if s == "" {
		return netip.Prefix{}, "empty"
	}
	if strings.Contains(s, "%") {
		return netip.Prefix{}, fmt.Sprintf("%q has a zone: zones are not supported in networks", s)
	}
	var p netip.Prefix
	if strings.Contains(s, "/") {
		var err error
		if p, err = netip.ParsePrefix(s); err != nil {
			return netip.Prefix{}, fmt.Sprintf(`%q is not a network: write an address or a CIDR prefix such as "10.0.0.0/8" or "2001:db8::/32"`, s)
		}
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, fmt.Sprintf(`%q is not an IP address: write an address or a CIDR prefix such as "10.0.0.0/8" or "2001:db8::/32"`, s)
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		v4 := netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96).Masked()
		return netip.Prefix{}, fmt.Sprintf("%q is an IPv4-mapped IPv6 network; sources are compared as IPv4: write %q", s, shortPrefix(v4))
	}
	if m := p.Masked(); m != p {
		return netip.Prefix{}, fmt.Sprintf("%q has bits set outside its /%d mask: write %q", s, p.Bits(), m.String())
	}
	return p, ""
}

// shortPrefix writes a single-address prefix as the bare address, the way
// an author would.
func shortPrefix(p netip.Prefix) string {
	if p.IsSingleIP() {
		return p.Addr().String()
	}
	return p.String()
}

// inNetworks reports whether a is in any of nets. An IPv4-mapped IPv6
// address (::ffff:10.1.2.3, as a dual-stack listener reports IPv4 clients)
// is compared as the IPv4 address it carries, and a zone is ignored. An
// invalid (unknown) address is in no network; what that means for a rule
// is the caller's decision.
func inNetworks(nets []netip.Prefix, a netip.Addr) bool {
	if !a.IsValid() {
		return false
	}
	a = a.Unmap().WithZone("")
	for _, p := range nets {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
