package groups

import (
	"fmt"
	"net/netip"
	"strings"
	"sync"

	"github.com/oschwald/maxminddb-golang/v2"

	"github.com/ztna-dev/ztna/internal/files"
)

// Countries resolves a source address to an ISO 3166-1 alpha-2 country
// code ("KR"); ok is false if the country is unknown. Implementations must
// be safe for concurrent use and must not block on I/O: they are called on
// the decision path.
type Countries interface {
	Country(netip.Addr) (code string, ok bool)
}

// GeoIP reads a MaxMind-format country database (GeoLite2-Country,
// GeoIP2-Country, or a City database, which also holds countries). It is
// safe for concurrent use. The database is read into memory: a policy
// reload opens a new one while requests may still use the old, and memory
// the garbage collector frees cannot be unmapped under a lookup.
type GeoIP struct {
	// mu makes Close wait for lookups in flight.
	mu sync.RWMutex
	db *maxminddb.Reader // nil after Close
}

var _ Countries = (*GeoIP)(nil)

// countryRecord is the only part of a record a lookup decodes.
type countryRecord struct {
	Country struct {
		ISOCode string `maxminddb:"iso_code"`
	} `maxminddb:"country"`
}

// maxGeoIPBytes bounds the database file: GeoLite2-Country is ~10 MB, a
// City database ~70 MB.
const maxGeoIPBytes = 256 << 20

// maxTypeProbe bounds how many records OpenGeoIP inspects in a database
// whose type does not say "Country" before deciding it holds no countries.
const maxTypeProbe = 1000

// OpenGeoIP opens the database at path, verifies the whole file (a corrupt
// database would otherwise turn into silently unknown countries) and checks
// that it holds countries: its type contains "Country", or its records
// carry country.iso_code. Verification reads every record, so opening
// takes time proportional to the file; do it at startup or reload, not per
// request.
func OpenGeoIP(path string) (*GeoIP, error) {
	data, _, err := files.ReadRegular(path, maxGeoIPBytes)
	if err != nil {
		return nil, fmt.Errorf("open GeoIP database %s: %w", path, err)
	}
	db, err := maxminddb.OpenBytes(data)
	if err != nil {
		return nil, fmt.Errorf("open GeoIP database %s: %w", path, err)
	}
	if err := checkCountryDB(db); err != nil {
		db.Close()
		return nil, fmt.Errorf("GeoIP database %s: %w", path, err)
	}
	return &GeoIP{db: db}, nil
}

func checkCountryDB(db *maxminddb.Reader) error {
	if err := db.Verify(); err != nil {
		return fmt.Errorf("not a valid MaxMind database: %w", err)
	}
	typ := db.Metadata.DatabaseType
	if strings.Contains(typ, "Country") {
		return nil
	}
	n := 0
	for res := range db.Networks() {
		var rec countryRecord
		if err := res.Decode(&rec); err == nil && isCountryCode(rec.Country.ISOCode) {
			return nil
		}
		if n++; n >= maxTypeProbe {
			break
		}
	}
	return fmt.Errorf("database type %q has no country records; use a GeoLite2-Country or GeoIP2-Country database", typ)
}

// Country returns the ISO code of the country a is located in. An
// IPv4-mapped IPv6 address is looked up as IPv4. It returns ok=false for an
// invalid address, an address the database does not know, a record without
// a well-formed code, and after Close.
func (g *GeoIP) Country(a netip.Addr) (string, bool) {
	if !a.IsValid() {
		return "", false
	}
	a = a.Unmap().WithZone("")
	g.mu.RLock()
	defer g.mu.RUnlock()
	if g.db == nil {
		return "", false
	}
	res := g.db.Lookup(a)
	if !res.Found() {
		return "", false
	}
	// One small allocation per hit (rec escapes into the decoder); the
	// code string itself comes from the reader's string cache.
	var rec countryRecord
	if err := res.Decode(&rec); err != nil || !isCountryCode(rec.Country.ISOCode) {
		return "", false
	}
	return rec.Country.ISOCode, true
}

// Close releases the database (to the garbage collector); it waits for
// lookups in flight. Lookups after Close report unknown. Closing twice is
// harmless. A GeoIP that is simply dropped needs no Close.
func (g *GeoIP) Close() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.db == nil {
		return nil
	}
	err := g.db.Close()
	g.db = nil
	return err
}

// compileCountries validates the entries of Rule.Countries: ISO 3166-1
// alpha-2 codes, two upper-case ASCII letters as the databases write them.
// On error i is the index of the bad entry; on success it is -1.
func compileCountries(codes []string) (out []string, i int, msg string) {
	if len(codes) == 0 {
		return nil, -1, ""
	}
	out = make([]string, 0, len(codes))
	for i, c := range codes {
		if isCountryCode(c) {
			out = append(out, c)
			continue
		}
		if up := strings.ToUpper(c); isCountryCode(up) {
			return nil, i, fmt.Sprintf("%q: country codes are upper-case: write %q", c, up)
		}
		return nil, i, fmt.Sprintf(`%q is not a country code: use ISO 3166-1 alpha-2, such as "KR" or "US"`, c)
	}
	return out, -1, ""
}

func isCountryCode(s string) bool {
	return len(s) == 2 && 'A' <= s[0] && s[0] <= 'Z' && 'A' <= s[1] && s[1] <= 'Z'
}
