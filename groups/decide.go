package groups

import (
	"math/bits"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Policy is a compiled set of per-app rules. It is immutable after Compile
// and safe for concurrent use; it implements Authorizer. A nil *Policy
// denies everything.
type Policy struct {
	apps map[string]*app
}

var _ Authorizer = (*Policy)(nil)

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
	byGroup             map[string]uint32 // group name → offset in pool
	pool                []uint64          // the bitsets, pointer-free for the GC
	noRule, notSignedIn string            // precomputed parts of deny reasons
}

// rule is the request part of a compiled Rule (method and path); the
// subject part lives in the app's bitsets.
type rule struct {
	name, reason string // reason is "allowed by rule …" or "denied by rule …"

	anyMethod    bool
	methods      uint16   // standard methods, see methodBit
	otherMethods []string // extension methods, upper-cased

	anyPath  bool
	prefixes []string // match on a segment boundary
	exact    []string
}

// stackWords is how many bitset words Decide keeps on the stack: apps with
// up to 1024 rules decide without allocating.
const stackWords = 16

// Decide decides r: unknown app → deny; any matching deny rule → deny;
// else the first matching allow rule (in order) → allow; else deny. A
// subject without a user ID, or a request with an invalid method or a
// non-canonical path, is denied: explicit deny rules are only sound over
// the canonical form of a request.
func (p *Policy) Decide(r Request) Decision {
	if p == nil {
		return Decision{Reason: "no access policy is loaded"}
	}
	a := p.apps[r.App]
	if a == nil {
		return Decision{Reason: "no policy for app " + strconv.Quote(r.App)}
	}
	s := &r.Subject
	if s.User == "" {
		return Decision{Reason: a.notSignedIn}
	}
	if !isToken(r.Method) {
		return Decision{Reason: "the request method is not valid"}
	}
	if !isCanonicalPath(r.Path) {
		return Decision{Reason: "the request path is not canonical"}
	}

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
		for _, g := range s.Groups {
			if off, ok := a.byGroup[g]; ok {
				a.or(groups, off)
			}
		}
	}

	mbit := methodBit(r.Method)
	if i := a.first(a.deny, users, groups, mbit, r.Method, r.Path); i >= 0 {
		return Decision{Rule: a.rules[i].name, Reason: a.rules[i].reason}
	}
	if i := a.first(a.allow, users, groups, mbit, r.Method, r.Path); i >= 0 {
		return Decision{Allow: true, Rule: a.rules[i].name, Reason: a.rules[i].reason}
	}
	return Decision{Reason: a.defaultDenyReason(r)}
}

func (a *app) or(dst []uint64, off uint32) {
	src := a.pool[off : int(off)+len(dst)]
	for w := range dst {
		dst[w] |= src[w]
	}
}

// first returns the index of the first rule in action whose subject, method
// and path conditions all match, or -1.
func (a *app) first(action, users, groups []uint64, mbit uint16, method, path string) int {
	for w := range action {
		cand := action[w] & (^a.needUser[w] | users[w]) & (^a.needGroup[w] | groups[w])
		for cand != 0 {
			i := w*64 + bits.TrailingZeros64(cand)
			cand &= cand - 1
			if rl := &a.rules[i]; rl.matchMethod(mbit, method) && rl.matchPath(path) {
				return i
			}
		}
	}
	return -1
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
	for _, pre := range rl.prefixes {
		if strings.HasPrefix(path, pre) && (len(path) == len(pre) || path[len(pre)] == '/') {
			return true
		}
	}
	for _, e := range rl.exact {
		if path == e {
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
