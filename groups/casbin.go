package groups

import (
	"fmt"
	"hash/maphash"
	"math/bits"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/casbin/casbin/v2"
	"github.com/casbin/casbin/v2/model"
)

// Group conditions are evaluated by Casbin. The model is generated from the
// policy: the request is one value, r.sub, the subject's attributes as a
// map (CasbinSubject), and every group with a `when` condition is one
// matcher — m for the first, m2, m3, … for the next — written in Casbin's
// expression syntax (Expr.Casbin):
//
//	[request_definition]
//	r = sub
//	[policy_definition]
//	p = grp
//	[policy_effect]
//	e = some(where (p.eft == allow))
//	[matchers]
//	m = (r.sub.user_department == "Security Tech")
//	m2 = ((r.sub.user_title in ("Security Engineer")) && ("security" in r.sub.user_groups))
//
// Enforce with an EnforceContext naming a group's matcher evaluates that
// one condition. This is how the design avoids Casbin's naive ABAC cost
// (an eval() re-parsed per policy row, every row scanned per request):
// Casbin compiles each matcher once, an index built from each condition's
// required attribute values picks the few candidate groups a subject can
// be in, and a subject's resulting membership is cached by the content of
// its attributes for the life of the Policy.
const casbinModelHead = `[request_definition]
r = sub
[policy_definition]
p = grp
[policy_effect]
e = some(where (p.eft == allow))
[matchers]
`

// conditions evaluates the `when` conditions of a policy's groups.
type conditions struct {
	enf       *casbin.SyncedEnforcer // nil when no group has a condition
	model     string
	refs      []string                        // every attribute any condition reads
	index     map[string]map[string][]indexed // attribute → value → groups that need it
	unguarded []int32                         // groups whose condition no index entry covers
	groups    []*group
}

// indexed is a group found in the index under an attribute value. exact:
// the value alone makes the subject a member (the condition is that one
// comparison).
type indexed struct {
	group int32
	exact bool
}

// compileConditions generates the Casbin model for gs and indexes their
// conditions.
func compileConditions(gs []*group) (*conditions, error) {
	c := &conditions{index: map[string]map[string][]indexed{}, groups: gs}
	var b strings.Builder
	b.WriteString(casbinModelHead)
	n := 0
	refs := map[string]bool{}
	for _, g := range gs {
		if g.when == nil {
			continue
		}
		n++
		g.matcher = "m"
		if n > 1 {
			g.matcher = "m" + strconv.Itoa(n)
		}
		fmt.Fprintf(&b, "# group %s\n%s = %s\n", strconv.Quote(g.name), g.matcher, g.when.Casbin())
		for _, r := range g.when.Refs() {
			refs[r] = true
		}
		alts, exact := g.when.indexPlan()
		if alts == nil {
			c.unguarded = append(c.unguarded, g.index)
			continue
		}
		for _, gd := range alts {
			byValue := c.index[gd.Attr]
			if byValue == nil {
				byValue = map[string][]indexed{}
				c.index[gd.Attr] = byValue
			}
			for _, v := range gd.Values {
				if l := byValue[v]; len(l) == 0 || l[len(l)-1].group != g.index {
					byValue[v] = append(l, indexed{group: g.index, exact: exact})
				}
			}
		}
	}
	for r := range refs {
		c.refs = append(c.refs, r)
	}
	slices.Sort(c.refs)
	c.model = b.String()
	if n == 0 {
		return c, nil
	}
	m, err := model.NewModelFromString(c.model)
	if err != nil {
		return nil, fmt.Errorf("casbin model: %w", err)
	}
	if c.enf, err = casbin.NewSyncedEnforcer(m); err != nil {
		return nil, fmt.Errorf("casbin enforcer: %w", err)
	}
	// Compile every matcher now, so that a condition Casbin cannot parse
	// fails the reload instead of a request.
	sub := CasbinSubject(&Attrs{}, c.refs)
	for i, g := range gs {
		if g.when == nil {
			continue
		}
		if _, err := c.enforce(g, sub); err != nil {
			return nil, &GroupError{Index: i, Name: g.name, Field: "when", Msg: "Casbin rejected the condition: " + err.Error()}
		}
	}
	return c, nil
}

// CasbinModel returns the Casbin model generated for the policy's group
// conditions (`ztna policy check --casbin` prints it).
func (p *Policy) CasbinModel() string {
	if p == nil {
		return ""
	}
	return p.cond.model
}

func (c *conditions) enforce(g *group, sub map[string]any) (bool, error) {
	return c.enf.Enforce(casbin.EnforceContext{RType: "r", PType: "p", EType: "e", MType: g.matcher}, sub)
}

// candidates calls fn for each group whose condition a can satisfy
// according to the index, each at most once; exact says the index alone
// decided that a satisfies it.
func (c *conditions) candidates(a *Attrs, seen []uint64, fn func(g int32, exact bool) error) error {
	visit := func(g int32, exact bool) error {
		w, bit := g/64, uint64(1)<<(g%64)
		if seen[w]&bit != 0 {
			return nil
		}
		seen[w] |= bit
		return fn(g, exact)
	}
	for attr, byValue := range c.index {
		for _, v := range attrValues(a, attr) {
			for _, ix := range byValue[v] {
				if ix.exact {
					if err := visit(ix.group, true); err != nil {
						return err
					}
				}
			}
		}
	}
	// Exact hits first, so that a group both exact-hit and listed again
	// is not sent to Casbin.
	for attr, byValue := range c.index {
		for _, v := range attrValues(a, attr) {
			for _, ix := range byValue[v] {
				if err := visit(ix.group, false); err != nil {
					return err
				}
			}
		}
	}
	for _, g := range c.unguarded {
		if err := visit(g, false); err != nil {
			return err
		}
	}
	return nil
}

// attrValues returns the value(s) attribute attr (as in Expr.Refs) has in a.
func attrValues(a *Attrs, attr string) []string {
	switch attr {
	case "user.groups":
		return a.Groups
	case "device.profiles":
		return a.Profiles
	}
	if name, ok := strings.CutPrefix(attr, "user."); ok {
		return []string{a.User[name]}
	}
	if name, ok := strings.CutPrefix(attr, "device."); ok {
		return []string{a.Device[name]}
	}
	return nil
}

// eval sets in m the groups whose condition a satisfies: those the index
// decides exactly, and the other candidates as Casbin decides them. why,
// if not nil, is told the outcome for every candidate.
func (c *conditions) eval(a *Attrs, m *membership, why func(g int32, member bool)) error {
	if c.enf == nil {
		return nil
	}
	var sub map[string]any // built on the first question to Casbin
	seen := make([]uint64, len(m.bits))
	return c.candidates(a, seen, func(g int32, exact bool) error {
		ok := exact
		if !exact {
			if sub == nil {
				sub = CasbinSubject(a, c.refs)
			}
			var err error
			if ok, err = c.enforce(c.groups[g], sub); err != nil {
				return fmt.Errorf("group %q: %w", c.groups[g].name, err)
			}
		}
		if ok {
			m.set(g)
		}
		if why != nil {
			why(g, ok)
		}
		return nil
	})
}

// evalAll asks Casbin about every group with a condition, without the
// index: the reference the indexed evaluation must agree with.
func (c *conditions) evalAll(a *Attrs, m *membership) error {
	if c.enf == nil {
		return nil
	}
	sub := CasbinSubject(a, c.refs)
	for _, g := range c.groups {
		if g.when == nil {
			continue
		}
		ok, err := c.enforce(g, sub)
		if err != nil {
			return err
		}
		if ok {
			m.set(g.index)
		}
	}
	return nil
}

// explicitMembers indexes Group.Members and IdP includes.
type explicitMembers struct {
	byUser  map[string][]int32 // user ID → groups
	byEmail map[string][]int32 // ASCII-lower-cased email → groups
	byIdP   map[string][]int32 // IdP group claim → groups that include it
}

func indexMembers(gs []*group) *explicitMembers {
	x := &explicitMembers{byUser: map[string][]int32{}, byEmail: map[string][]int32{}, byIdP: map[string][]int32{}}
	for _, g := range gs {
		for _, u := range g.members {
			x.byUser[u] = appendOnce(x.byUser[u], g.index)
			if strings.Contains(u, "@") {
				e := lowerASCII(u)
				x.byEmail[e] = appendOnce(x.byEmail[e], g.index)
			}
		}
		for _, idp := range g.idp {
			x.byIdP[idp] = appendOnce(x.byIdP[idp], g.index)
		}
	}
	return x
}

func appendOnce(l []int32, g int32) []int32 {
	if len(l) > 0 && l[len(l)-1] == g {
		return l
	}
	return append(l, g)
}

// membership is the set of policy groups a subject is in.
type membership struct{ bits []uint64 }

// noGroups is the membership of everyone in a policy without groups.
var noGroups membership

func newMembership(groups int) *membership {
	return &membership{bits: make([]uint64, (groups+63)/64)}
}

func (m *membership) has(g int32) bool { return m.bits[g/64]&(1<<(g%64)) != 0 }
func (m *membership) set(g int32)      { m.bits[g/64] |= 1 << (g % 64) }

// each calls fn for every group in m, in index order.
func (m *membership) each(fn func(int32)) {
	for w, word := range m.bits {
		for word != 0 {
			fn(int32(w*64 + bits.TrailingZeros64(word)))
			word &= word - 1
		}
	}
}

// membership returns the groups s (on device d) is in, from the cache when
// the same attributes were seen before under this Policy.
func (p *Policy) membership(s *Subject, d *Device) (*membership, error) {
	if len(p.groups) == 0 {
		return &noGroups, nil
	}
	var buf [512]byte
	key := p.cacheKey(buf[:0], s, d)
	if m := p.cache.get(key); m != nil {
		return m, nil
	}
	m, err := p.computeMembership(s, d, nil)
	if err != nil {
		return nil, err
	}
	p.cache.put(key, m)
	return m, nil
}

// Reasons a subject is in a group, reported to computeMembership's why.
const (
	viaCondition = "condition"
	viaMember    = "member"
	viaIdP       = "idp"
	viaInclude   = "include"
)

// computeMembership evaluates s's groups: conditions (Casbin), explicit
// members and IdP includes, then includes in dependency order. why, if
// not nil, hears how each group was decided.
func (p *Policy) computeMembership(s *Subject, d *Device, why func(g int32, member bool, via string, from int32)) (*membership, error) {
	a := attrsOf(s, d)
	m := newMembership(len(p.groups))
	var condWhy func(int32, bool)
	if why != nil {
		condWhy = func(g int32, ok bool) { why(g, ok, viaCondition, -1) }
	}
	if err := p.cond.eval(&a, m, condWhy); err != nil {
		return nil, err
	}
	mark := func(gs []int32, via string) {
		for _, g := range gs {
			if why != nil && !m.has(g) {
				why(g, true, via, -1)
			}
			m.set(g)
		}
	}
	mark(p.members.byUser[s.User], viaMember)
	if s.Email != "" {
		mark(p.members.byEmail[lowerASCII(s.Email)], viaMember)
	}
	for _, idp := range s.Groups {
		mark(p.members.byIdP[idp], viaIdP)
	}
	for _, g := range p.topo {
		if m.has(g) {
			continue
		}
		for _, inc := range p.groups[g].includes {
			if m.has(inc) {
				m.set(g)
				if why != nil {
					why(g, true, viaInclude, inc)
				}
				break
			}
		}
	}
	return m, nil
}

// cacheKey encodes everything membership depends on: the user's ID, email
// and IdP groups, the attributes conditions read, and the device. Fields
// are length-prefixed so that no two subjects share a key.
func (p *Policy) cacheKey(b []byte, s *Subject, d *Device) []byte {
	field := func(b []byte, v string) []byte {
		b = strconv.AppendInt(b, int64(len(v)), 10)
		b = append(b, ':')
		return append(b, v...)
	}
	b = field(b, s.User)
	b = field(b, s.Email)
	b = strconv.AppendInt(b, int64(len(s.Groups)), 10)
	for _, g := range s.Groups {
		b = field(b, g)
	}
	for _, r := range p.cond.refs {
		if name, ok := strings.CutPrefix(r, "user."); ok && name != "groups" && name != "id" && name != "email" {
			b = field(b, s.Attributes[name])
		}
	}
	if d == nil {
		return append(b, '-')
	}
	b = append(b, '+')
	b = field(b, d.ID)
	b = field(b, d.Platform)
	b = strconv.AppendInt(b, int64(len(d.Profiles)), 10)
	for _, pr := range d.Profiles {
		b = field(b, pr)
	}
	return b
}

// memberCache maps cache keys to memberships. It is sharded to keep
// concurrent decisions from contending, and bounded: a full shard is
// emptied (membership is cheap to recompute; an unbounded cache keyed by
// attacker-influenced attributes is not acceptable).
type memberCache struct {
	seed   maphash.Seed
	shards [memberShards]memberShard
}

const (
	memberShards   = 16
	maxShardMember = 16_384
)

type memberShard struct {
	mu sync.RWMutex
	m  map[string]*membership
}

func newMemberCache() *memberCache {
	c := &memberCache{seed: maphash.MakeSeed()}
	for i := range c.shards {
		c.shards[i].m = map[string]*membership{}
	}
	return c
}

func (c *memberCache) shard(key []byte) *memberShard {
	return &c.shards[maphash.Bytes(c.seed, key)%memberShards]
}

func (c *memberCache) get(key []byte) *membership {
	sh := c.shard(key)
	sh.mu.RLock()
	m := sh.m[string(key)]
	sh.mu.RUnlock()
	return m
}

func (c *memberCache) put(key []byte, m *membership) {
	sh := c.shard(key)
	sh.mu.Lock()
	if len(sh.m) >= maxShardMember {
		clear(sh.m)
	}
	sh.m[string(key)] = m
	sh.mu.Unlock()
}
