package groups

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/maxmind/mmdbwriter"
	"github.com/maxmind/mmdbwriter/mmdbtype"
)

// countryRec is a record shaped like GeoLite2-Country's, with the fields a
// lookup must skip.
func countryRec(code, name string) mmdbtype.Map {
	return mmdbtype.Map{
		"continent": mmdbtype.Map{"code": mmdbtype.String("AS"), "geoname_id": mmdbtype.Uint32(6255147)},
		"country": mmdbtype.Map{
			"iso_code":   mmdbtype.String(code),
			"geoname_id": mmdbtype.Uint32(1835841),
			"names":      mmdbtype.Map{"en": mmdbtype.String(name), "ko": mmdbtype.String("대한민국")},
		},
		"registered_country": mmdbtype.Map{"iso_code": mmdbtype.String(code)},
	}
}

// writeMMDB writes a MaxMind DB of type dbType with the given records (CIDR →
// record) into a temporary directory and returns its path. IPv4 networks go
// into the IPv4 subtree of an IPv6 tree, as in MaxMind's own databases.
func writeMMDB(t *testing.T, dbType string, records map[string]mmdbtype.DataType) string {
	t.Helper()
	w, err := mmdbwriter.New(mmdbwriter.Options{
		DatabaseType:            dbType,
		Description:             map[string]string{"en": "ztna test database"}, // Verify requires one, as real databases have
		IncludeReservedNetworks: true,                                          // the documentation ranges below are reserved
		IPVersion:               6,
	})
	if err != nil {
		t.Fatal(err)
	}
	for cidr, rec := range records {
		_, n, err := net.ParseCIDR(cidr)
		if err != nil {
			t.Fatal(err)
		}
		if err := w.Insert(n, rec); err != nil {
			t.Fatalf("insert %s: %v", cidr, err)
		}
	}
	path := filepath.Join(t.TempDir(), dbType+".mmdb")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.WriteTo(f); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

func testCountryDB(t *testing.T) string {
	return writeMMDB(t, "GeoLite2-Country", map[string]mmdbtype.DataType{
		"203.0.113.0/24":  countryRec("KR", "South Korea"),
		"198.51.100.0/24": countryRec("US", "United States"),
		"2001:db8:1::/48": countryRec("DE", "Germany"),
		// Real databases have networks with a continent but no country
		// (and a corrupt one might have anything): those are unknown.
		"192.0.2.0/24":  mmdbtype.Map{"continent": mmdbtype.Map{"code": mmdbtype.String("EU")}},
		"100.64.0.0/24": countryRec("kr", "bad case"),
		"100.64.1.0/24": countryRec("KOR", "alpha-3"),
		"100.64.2.0/24": mmdbtype.Map{"country": mmdbtype.Map{"iso_code": mmdbtype.Uint32(410)}},
	})
}

func openTestGeoIP(t *testing.T, path string) *GeoIP {
	t.Helper()
	g, err := OpenGeoIP(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	return g
}

func TestGeoIPCountry(t *testing.T) {
	g := openTestGeoIP(t, testCountryDB(t))
	tests := []struct {
		addr string // "" = invalid address
		code string // "" = unknown
	}{
		{"203.0.113.5", "KR"},
		{"203.0.113.255", "KR"},
		{"::ffff:203.0.113.5", "KR"}, // IPv4-mapped: looked up as IPv4
		{"198.51.100.1", "US"},
		{"2001:db8:1::5", "DE"},
		{"2001:db8:1:ffff::1", "DE"},
		{"2001:db8:2::1", ""},
		{"203.0.114.1", ""},
		{"8.8.8.8", ""},
		{"192.0.2.1", ""},    // a record without a country
		{"100.64.0.1", ""},   // lower-case code
		{"100.64.1.1", ""},   // not alpha-2
		{"100.64.2.1", ""},   // not a string
		{"fe80::1%eth0", ""}, // not in the database, and the zone does not matter
		{"", ""},
	}
	for _, tc := range tests {
		var a netip.Addr
		if tc.addr != "" {
			a = netip.MustParseAddr(tc.addr)
		}
		code, ok := g.Country(a)
		if code != tc.code || ok != (tc.code != "") {
			t.Errorf("Country(%s) = %q, %v; want %q, %v", tc.addr, code, ok, tc.code, tc.code != "")
		}
	}
}

func TestGeoIPLookupAllocations(t *testing.T) {
	g := openTestGeoIP(t, testCountryDB(t))
	for _, tc := range []struct {
		addr string
		max  float64
	}{
		{"203.0.113.5", 1},
		{"::ffff:203.0.113.5", 1},
		{"2001:db8:1::5", 1},
		{"8.8.8.8", 0},
	} {
		a := netip.MustParseAddr(tc.addr)
		g.Country(a) // warm the reader's string cache
		allocs := testing.AllocsPerRun(1000, func() { g.Country(a) })
		t.Logf("Country(%s): %.1f allocations per lookup", tc.addr, allocs)
		if allocs > tc.max {
			t.Errorf("Country(%s) allocates %.1f times per lookup, want at most %.0f", tc.addr, allocs, tc.max)
		}
	}
}

func TestOpenGeoIPAcceptsCityDatabase(t *testing.T) {
	path := writeMMDB(t, "GeoLite2-City", map[string]mmdbtype.DataType{
		"203.0.113.0/24": countryRec("KR", "South Korea"),
	})
	g := openTestGeoIP(t, path)
	if code, ok := g.Country(netip.MustParseAddr("203.0.113.1")); code != "KR" || !ok {
		t.Errorf("Country = %q, %v; want KR, true", code, ok)
	}
}

func TestOpenGeoIPErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good, err := os.ReadFile(testCountryDB(t))
	if err != nil {
		t.Fatal(err)
	}
	// The search tree comes first: overwrite part of it so that records
	// point outside the file.
	corruptTree := append([]byte(nil), good...)
	for i := 0; i < 256 && i < len(corruptTree)/2; i++ {
		corruptTree[i] = 0xff
	}

	tests := []struct {
		name, path, want string
	}{
		{"missing", filepath.Join(dir, "missing.mmdb"), "no such file"},
		{"empty", write("empty.mmdb", nil), "empty"},
		{"not a database", write("text.mmdb", []byte(strings.Repeat("not a database\n", 100))), "invalid MaxMind DB"},
		{"truncated", write("truncated.mmdb", good[:len(good)/2]), "invalid MaxMind DB"},
		{"corrupt search tree", write("corrupt.mmdb", corruptTree), "not a valid MaxMind database"},
		{"wrong database type", writeMMDB(t, "GeoLite2-ASN", map[string]mmdbtype.DataType{
			"203.0.113.0/24": mmdbtype.Map{"autonomous_system_number": mmdbtype.Uint32(64500)},
		}), `database type "GeoLite2-ASN" has no country records; use a GeoLite2-Country or GeoIP2-Country database`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g, err := OpenGeoIP(tc.path)
			if err == nil {
				g.Close()
				t.Fatal("OpenGeoIP succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.path) {
				t.Errorf("OpenGeoIP error %q does not name the file and contain %q", err, tc.want)
			}
		})
	}
}

func TestGeoIPClose(t *testing.T) {
	g, err := OpenGeoIP(testCountryDB(t))
	if err != nil {
		t.Fatal(err)
	}
	a := netip.MustParseAddr("203.0.113.5")
	if _, ok := g.Country(a); !ok {
		t.Fatal("unknown before Close")
	}
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	if code, ok := g.Country(a); ok || code != "" {
		t.Errorf("after Close: Country = %q, %v", code, ok)
	}
	if err := g.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// Lookups racing with Close either see the database or report unknown;
// they never read unmapped memory (which would crash the test binary).
func TestGeoIPConcurrentLookupsAndClose(t *testing.T) {
	g, err := OpenGeoIP(testCountryDB(t))
	if err != nil {
		t.Fatal(err)
	}
	a := netip.MustParseAddr("203.0.113.5")
	var wg sync.WaitGroup
	start := make(chan struct{})
	bad := make(chan string, 8)
	for range 8 {
		wg.Go(func() {
			<-start
			for range 2000 {
				if code, ok := g.Country(a); ok && code != "KR" || !ok && code != "" {
					bad <- code
					return
				}
			}
		})
	}
	close(start)
	if err := g.Close(); err != nil {
		t.Error(err)
	}
	wg.Wait()
	close(bad)
	for code := range bad {
		t.Errorf("lookup returned %q", code)
	}
}

func TestCompileCountries(t *testing.T) {
	out, i, msg := compileCountries([]string{"KR", "US"})
	if msg != "" || i != -1 || len(out) != 2 || out[0] != "KR" || out[1] != "US" {
		t.Errorf("compileCountries(KR, US) = %q, %d, %q", out, i, msg)
	}
	if out, i, msg := compileCountries(nil); out != nil || i != -1 || msg != "" {
		t.Errorf("compileCountries(nil) = %q, %d, %q", out, i, msg)
	}
	invalid := []struct {
		in  []string
		i   int
		msg string
	}{
		{[]string{"KR", "us"}, 1, `"us": country codes are upper-case: write "US"`},
		{[]string{"Kr"}, 0, `"Kr": country codes are upper-case: write "KR"`},
		{[]string{"KOR"}, 0, `"KOR" is not a country code: use ISO 3166-1 alpha-2, such as "KR" or "US"`},
		{[]string{""}, 0, `"" is not a country code: use ISO 3166-1 alpha-2, such as "KR" or "US"`},
		{[]string{"K1"}, 0, `"K1" is not a country code: use ISO 3166-1 alpha-2, such as "KR" or "US"`},
		{[]string{" KR"}, 0, `" KR" is not a country code: use ISO 3166-1 alpha-2, such as "KR" or "US"`},
		{[]string{"ǅ"}, 0, `"ǅ" is not a country code: use ISO 3166-1 alpha-2, such as "KR" or "US"`},
	}
	for _, tc := range invalid {
		out, i, msg := compileCountries(tc.in)
		if out != nil || i != tc.i || msg != tc.msg {
			t.Errorf("compileCountries(%q) = %q, %d, %q; want nil, %d, %q", tc.in, out, i, msg, tc.i, tc.msg)
		}
	}
}
