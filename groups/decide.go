package groups

import (
	"fmt"
	"math/bits"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Policy is a compiled policy: groups and per-app rules. It is immutable
// after Compile and safe for concurrent use; it implements Authorizer. A
// nil *Policy denies everything.
type Policy struct {
	version string
	apps    map[string]*app
	groups  []*group
	byName  map[string]int32
	topo    []int32 // groups ordered so that included groups come first
	cond    *conditions
	members *explicitMembers
	cache   *memberCache
	geo     Countries
	// needsProfiles is set when a condition or rule reads the posture
	// profiles a device meets.
	needsProfiles bool
}

var _ Authorizer = (*Policy)(nil)

// Version identifies the policy's content; it changes exactly when what
// the policy says changes.
func (p *Policy) Version() string {
	if p == nil {
		return ""
	}
	return p.version
}

// HasApp reports whether the policy has rules for app.
func (p *Policy) HasApp(app string) bool {
	return p != nil && p.apps[app] != nil
}

// group is one compiled group.
type group struct {
	name, description string
	index             int32
	when              *Expr  // nil: no condition
	matcher           string // the Casbin matcher that evaluates when
	members           []string
	includes          []int32 // policy groups whose members are members
	idp               []string
}

// app is one app's compiled rules. Rule i is bit i%64 of word i/64 in every
// bitset. Who a rule applies to is indexed by subject key (user ID, email,
// group) so that Decide does one map lookup per key of the subject instead
// of one per (rule, key) pair.
type app struct {
	name  string
	words int // bitset length in uint64 words
	rules []rule

	deny, allow         []uint64          // rules by action
	needUser, needGroup []uint64          // rules that have a Users / Groups condition
	byUser              map[string]uint32 // exact user ID → offset of its rule bitset in pool
	byEmail             map[string]uint32 // ASCII-lower-cased email → offset in pool
	byGroup             map[int32]uint32  // policy group → offset in pool
	byIdP               map[string]uint32 // IdP group claim → offset in pool
	pool                []uint64          // the bitsets, pointer-free for the GC
	noRule, notSignedIn string            // precomputed parts of deny reasons
}

// rule is the request part of a compiled Rule; who it applies to (users,
// any-of groups) lives in the app's bitsets.
type rule struct {
	name, reason string // reason is "allowed by rule …" or "denied by rule …"
	deny         bool

	anyMethod    bool
	methods      uint16   // standard methods, see methodBit
	otherMethods []string // extension methods, upper-cased
	methodNames  []string // all, upper-cased, for explain

	anyPath bool
	paths   []pathPattern

	// users, anyGroups and anyIdP repeat the subject conditions indexed in
	// the app's bitsets, for Explain.
	users     []string
	anyGroups []int32
	anyIdP    []string

	// hasContext is set when any condition below is present.
	hasContext     bool
	allGroups      []int32
	allIdP         []string
	windows        []timeWindow
	networks       []netip.Prefix
	countries      []string
	posture        string
	deviceRequired bool
}

// stackWords is how many bitset words Decide keeps on the stack: apps with
// up to 1024 rules decide without allocating.
const stackWords = 16

// Decide decides r: unknown app → deny; any matching deny rule → deny;
// else the first matching allow rule (in order) → allow; else deny. A
// subject without a user ID, or a request with an invalid method or a
// non-canonical path, is denied: explicit deny rules are only sound over
// the canonical form of a request. So is a request whose group membership
// cannot be evaluated.
func (p *Policy) Decide(r Request) Decision {
	a, m, d, ok := p.prepare(&r)
	if !ok {
		return d
	}
	d, _ = a.decide(p, &r, m, nil)
	return d
}

// prepare runs the checks every decision starts with and evaluates the
// subject's groups. ok is false when d is already the (deny) decision.
func (p *Policy) prepare(r *Request) (a *app, m *membership, d Decision, ok bool) {
	if p == nil {
		return nil, nil, Decision{Reason: "no access policy is loaded"}, false
	}
	a = p.apps[r.App]
	if a == nil {
		return nil, nil, Decision{Reason: "no policy for app " + strconv.Quote(r.App)}, false
	}
	if r.Subject.User == "" {
		return nil, nil, Decision{Reason: a.notSignedIn}, false
	}
	if !isToken(r.Method) {
		return nil, nil, Decision{Reason: "the request method is not valid"}, false
	}
	if !isCanonicalPath(r.Path) {
		return nil, nil, Decision{Reason: "the request path is not canonical"}, false
	}
	m, err := p.membership(&r.Subject, r.Device)
	if err != nil {
		return nil, nil, Decision{Reason: "group membership could not be evaluated"}, false
	}
	return a, m, Decision{}, true
}

// reqCtx is what the context conditions of rules read, with the source's
// country looked up at most once per decision.
type reqCtx struct {
	r       *Request
	m       *membership
	p       *Policy
	now     time.Time
	country string
	looked  bool
}

func (rc *reqCtx) lookupCountry() (string, bool) {
	if !rc.looked {
		rc.looked = true
		rc.country = lookupCountry(rc.p.geo, rc.r.Source)
	}
	return rc.country, rc.country != ""
}

// lookupCountry is kept apart from reqCtx so that the interface call does
// not make escape analysis move every request to the heap.
func lookupCountry(geo Countries, a netip.Addr) string {
	if geo == nil || !a.IsValid() {
		return ""
	}
	c, _ := geo.Country(a.Unmap())
	return c
}

// trace, when not nil, receives every rule's outcome (for Explain).
type trace func(i int, userOK, groupOK, methodOK, pathOK bool, failed string)

// decide is Decide after prepare.
func (a *app) decide(p *Policy, r *Request, m *membership, tr trace) (Decision, *rule) {
	s := &r.Subject
	var userBuf, groupBuf [stackWords]uint64
	var users, groups []uint64
	if a.words <= stackWords {
		users, groups = userBuf[:a.words], groupBuf[:a.words]
	} else {
		users, groups = make([]uint64, a.words), make([]uint64, a.words)
	}
	if len(a.byUser) > 0 {
		if off, ok := a.byUser[s.User]; ok {
			a.or(users, off)
		}
	}
	if len(a.byEmail) > 0 && s.Email != "" {
		if off, ok := lookupFoldASCII(a.byEmail, s.Email); ok {
			a.or(users, off)
		}
	}
	if len(a.byGroup) > 0 {
		for w, word := range m.bits {
			for word != 0 {
				g := int32(w*64 + bits.TrailingZeros64(word))
				word &= word - 1
				if off, ok := a.byGroup[g]; ok {
					a.or(groups, off)
				}
			}
		}
	}
	if len(a.byIdP) > 0 {
		for _, g := range s.Groups {
			if off, ok := a.byIdP[g]; ok {
				a.or(groups, off)
			}
		}
	}

	rc := reqCtx{r: r, m: m, p: p, now: r.Time}
	if rc.now.IsZero() {
		rc.now = time.Now()
	}
	mbit := methodBit(r.Method)
	if tr != nil {
		a.traceAll(&rc, users, groups, mbit, tr)
	}
	if i, _ := a.first(a.deny, users, groups, mbit, &rc); i >= 0 {
		return Decision{Rule: a.rules[i].name, Reason: a.rules[i].reason}, &a.rules[i]
	}
	i, near := a.first(a.allow, users, groups, mbit, &rc)
	if i >= 0 {
		return Decision{Allow: true, Rule: a.rules[i].name, Reason: a.rules[i].reason}, &a.rules[i]
	}
	reason := a.defaultDenyReason(*r)
	if near >= 0 {
		_, failed := a.rules[near].matchContext(&rc)
		reason += "; rule " + strconv.Quote(a.rules[near].name) + " allows it only " + a.rules[near].describe(failed)
	}
	return Decision{Reason: reason}, nil
}

func (a *app) or(dst []uint64, off uint32) {
	src := a.pool[off : int(off)+len(dst)]
	for w := range dst {
		dst[w] |= src[w]
	}
}

// first returns the index of the first rule in action whose subject,
// method, path and context conditions all match, or -1; near is the first
// rule that matched all but its context conditions, or -1.
func (a *app) first(action, users, groups []uint64, mbit uint16, rc *reqCtx) (i, near int) {
	near = -1
	for w := range action {
		cand := action[w] & (^a.needUser[w] | users[w]) & (^a.needGroup[w] | groups[w])
		for cand != 0 {
			i := w*64 + bits.TrailingZeros64(cand)
			cand &= cand - 1
			rl := &a.rules[i]
			if !rl.matchMethod(mbit, rc.r.Method) || !rl.matchPath(rc.r.Path) {
				continue
			}
			if !rl.hasContext {
				return i, near
			}
			if ok, _ := rl.matchContext(rc); ok {
				return i, near
			}
			if near < 0 {
				near = i
			}
		}
	}
	return -1, near
}

// traceAll reports every rule's outcome to tr.
func (a *app) traceAll(rc *reqCtx, users, groups []uint64, mbit uint16, tr trace) {
	for i := range a.rules {
		w, bit := i/64, uint64(1)<<(i%64)
		rl := &a.rules[i]
		failed := ""
		if rl.hasContext {
			_, failed = rl.matchContext(rc)
		}
		tr(i, a.needUser[w]&bit == 0 || users[w]&bit != 0, a.needGroup[w]&bit == 0 || groups[w]&bit != 0,
			rl.matchMethod(mbit, rc.r.Method), rl.matchPath(rc.r.Path), failed)
	}
}

// Context conditions a rule can fail on, as matchContext reports them.
const (
	condAllGroups = "all_groups"
	condDevice    = "device"
	condPosture   = "posture"
	condTime      = "time"
	condNetwork   = "networks"
	condCountry   = "countries"
)

// matchContext checks the conditions beyond who, method and path. For a
// deny rule, a source address or country that cannot be determined counts
// as matching: unknown must not let a request past a deny. failed names
// the first condition that did not match.
func (rl *rule) matchContext(rc *reqCtx) (ok bool, failed string) {
	for _, g := range rl.allGroups {
		if !rc.m.has(g) {
			return false, condAllGroups
		}
	}
	for _, g := range rl.allIdP {
		if !slices.Contains(rc.r.Subject.Groups, g) {
			return false, condAllGroups
		}
	}
	if rl.deviceRequired && rc.r.Device == nil {
		if rl.posture != "" {
			return false, condPosture
		}
		return false, condDevice
	}
	if rl.posture != "" && !slices.Contains(rc.r.Device.Profiles, rl.posture) {
		return false, condPosture
	}
	if len(rl.windows) > 0 && !anyWindow(rl.windows, rc.now) {
		return false, condTime
	}
	if len(rl.networks) > 0 {
		if !rc.r.Source.IsValid() {
			if !rl.deny {
				return false, condNetwork
			}
		} else if !inNetworks(rl.networks, rc.r.Source) {
			return false, condNetwork
		}
	}
	if len(rl.countries) > 0 {
		c, known := rc.lookupCountry()
		if !known {
			if !rl.deny {
				return false, condCountry
			}
		} else if !slices.Contains(rl.countries, c) {
			return false, condCountry
		}
	}
	return true, ""
}

func anyWindow(ws []timeWindow, t time.Time) bool {
	for i := range ws {
		if ws[i].contains(t) {
			return true
		}
	}
	return false
}

// describe says what a rule's failed context condition requires, for the
// deny reason: the user is already who the rule is for, so telling them
// how to comply discloses nothing they could not try.
func (rl *rule) describe(failed string) string {
	switch failed {
	case condAllGroups:
		return "to members of all of its groups"
	case condDevice:
		return "from an enrolled device"
	case condPosture:
		return "from an enrolled device that meets the posture profile " + strconv.Quote(rl.posture)
	case condTime:
		ws := make([]string, len(rl.windows))
		for i, w := range rl.windows {
			ws[i] = w.String()
		}
		return "during " + clipList(ws, " or ")
	case condNetwork:
		ns := make([]string, len(rl.networks))
		for i, n := range rl.networks {
			ns[i] = n.String()
		}
		return "from the networks " + clipList(ns, ", ")
	case condCountry:
		return "from " + clipList(rl.countries, ", ")
	}
	return "under other conditions"
}

// clipList joins at most three items, saying how many more there are.
func clipList(items []string, sep string) string {
	if len(items) <= 3 {
		return strings.Join(items, sep)
	}
	return strings.Join(items[:3], sep) + fmt.Sprintf(" (and %d more)", len(items)-3)
}

func (rl *rule) matchMethod(mbit uint16, method string) bool {
	if rl.anyMethod || rl.methods&mbit != 0 {
		return true
	}
	if mbit != 0 {
		return false
	}
	for _, m := range rl.otherMethods {
		if strings.EqualFold(m, method) {
			return true
		}
	}
	return false
}

func (rl *rule) matchPath(path string) bool {
	if rl.anyPath {
		return true
	}
	for i := range rl.paths {
		if rl.paths[i].match(path) {
			return true
		}
	}
	return false
}

// maxReasonPath bounds how much of the request path a reason repeats.
const maxReasonPath = 200

// defaultDenyReason tells the user who they are signed in as and what was
// refused; it names neither the rules nor anyone else.
func (a *app) defaultDenyReason(r Request) string {
	who := r.Subject.Email
	if who == "" {
		who = r.Subject.User
	}
	path := r.Path
	if len(path) > maxReasonPath {
		cut := maxReasonPath
		for cut > 0 && !utf8.RuneStart(path[cut]) {
			cut--
		}
		path = path[:cut] + "…"
	}
	return a.noRule + who + " to " + strings.ToUpper(r.Method) + " " + path
}

// Standard methods get one bit each so that the common case compares bits.
const (
	methodGET uint16 = 1 << iota
	methodHEAD
	methodPOST
	methodPUT
	methodPATCH
	methodDELETE
	methodCONNECT
	methodOPTIONS
	methodTRACE
)

// methodBit returns the bit of a standard method, compared case-insensitively
// without allocating, or 0 for any other method.
func methodBit(m string) uint16 {
	if b := exactMethodBit(m); b != 0 {
		return b
	}
	var buf [7]byte // the longest standard method
	if len(m) > len(buf) {
		return 0
	}
	for i := 0; i < len(m); i++ {
		c := m[i]
		if 'a' <= c && c <= 'z' {
			c -= 'a' - 'A'
		}
		buf[i] = c
	}
	return exactMethodBit(string(buf[:len(m)]))
}

func exactMethodBit(m string) uint16 {
	switch m {
	case "GET":
		return methodGET
	case "HEAD":
		return methodHEAD
	case "POST":
		return methodPOST
	case "PUT":
		return methodPUT
	case "PATCH":
		return methodPATCH
	case "DELETE":
		return methodDELETE
	case "CONNECT":
		return methodCONNECT
	case "OPTIONS":
		return methodOPTIONS
	case "TRACE":
		return methodTRACE
	}
	return 0
}

// maxFoldLen covers every valid email address (RFC 5321 allows 254 bytes);
// longer ones are folded on the heap.
const maxFoldLen = 320

// lookupFoldASCII looks up s in m after lower-casing its ASCII letters,
// without allocating for keys up to maxFoldLen bytes.
func lookupFoldASCII(m map[string]uint32, s string) (uint32, bool) {
	if len(s) > maxFoldLen {
		v, ok := m[lowerASCII(s)]
		return v, ok
	}
	var buf [maxFoldLen]byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		buf[i] = c
	}
	v, ok := m[string(buf[:len(s)])] // the compiler does not copy the key here
	return v, ok
}

// isCanonicalPath reports whether p is a path the rules can be trusted on:
// absolute, with no empty, "." or ".." segment, no backslash and no control
// character. The edge canonicalises paths before it asks; this check keeps
// a bug there from turning into a bypass of a deny rule.
func isCanonicalPath(p string) bool {
	if p == "" || p[0] != '/' {
		return false
	}
	segStart := 1
	for i := 1; i <= len(p); i++ {
		if i < len(p) {
			c := p[i]
			if c < ' ' || c == 0x7f || c == '\\' {
				return false
			}
			if c != '/' {
				continue
			}
		}
		// p[segStart:i] is a segment; an empty one is only allowed last
		// ("/" itself and a trailing slash).
		switch seg := p[segStart:i]; seg {
		case "":
			if i < len(p) {
				return false
			}
		case ".", "..":
			return false
		}
		segStart = i + 1
	}
	return true
}
