package groups

import (
	"math/rand/v2"
	"slices"
	"testing"
)

// TestIndexedMembershipAgreesWithCasbin is the index's correctness proof:
// on the benchmark's generated policy (500 groups of every kind) and on
// its users, plus users with shuffled attributes, the groups found through
// the index (exact hits decided by the index, other candidates by Casbin)
// are exactly the groups Casbin finds when asked about every group.
func TestIndexedMembershipAgreesWithCasbin(t *testing.T) {
	w := sharedBenchWorld()
	p := benchCompile(t, w)
	rng := rand.New(rand.NewPCG(3, 4))
	n := 400
	if testing.Short() {
		n = 100
	}
	members := 0
	for i := range n {
		u := w.users[rng.IntN(len(w.users))]
		s, d := u.subject, u.device
		if i%2 == 1 { // mix attributes of two users: combinations no user has
			o := w.users[rng.IntN(len(w.users))]
			s.Attributes = map[string]string{}
			for k, v := range u.subject.Attributes {
				s.Attributes[k] = v
			}
			for k, v := range o.subject.Attributes {
				if rng.IntN(2) == 0 {
					s.Attributes[k] = v
				}
			}
			s.Groups, d = o.subject.Groups, o.device
		}
		a := attrsOf(&s, d)
		got, want := newMembership(len(p.groups)), newMembership(len(p.groups))
		if err := p.cond.eval(&a, got, nil); err != nil {
			t.Fatal(err)
		}
		if err := p.cond.evalAll(&a, want); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got.bits, want.bits) {
			var gotNames, wantNames []string
			got.each(func(g int32) { gotNames = append(gotNames, p.groups[g].name) })
			want.each(func(g int32) { wantNames = append(wantNames, p.groups[g].name) })
			t.Fatalf("subject %+v device %+v:\nindexed %q\n casbin %q", s, d, gotNames, wantNames)
		}
		want.each(func(int32) { members++ })
	}
	if members < n { // the generator must put people in groups, or this proves nothing
		t.Fatalf("only %d memberships over %d subjects", members, n)
	}
}

func TestIndexPlan(t *testing.T) {
	tests := []struct {
		cond  string
		alts  []Guard
		exact bool
	}{
		{`user.department == "A"`, []Guard{{"user.department", []string{"A"}}}, true},
		{`user.title in ["B", "A"]`, []Guard{{"user.title", []string{"A", "B"}}}, true},
		{`"eng" in user.groups`, []Guard{{"user.groups", []string{"eng"}}}, true},
		{`user.department == "A" or "eng" in user.groups`, []Guard{{"user.department", []string{"A"}}, {"user.groups", []string{"eng"}}}, true},
		// An and chain is indexed by its most selective guard and still asks Casbin.
		{`device.platform == "linux" and user.department == "A"`, []Guard{{"user.department", []string{"A"}}}, false},
		{`user.title in ["x", "y"] and user.department == "A"`, []Guard{{"user.department", []string{"A"}}}, false},
		{`(user.department == "A" and user.title == "T") or user.department == "B"`,
			[]Guard{{"user.department", []string{"A"}}, {"user.department", []string{"B"}}}, false},
		// Nothing to index: a negation, !=, a bare boolean, an or with an unindexable branch.
		{`not (user.department == "A")`, nil, false},
		{`user.department != "A"`, nil, false},
		{`device.managed`, nil, false},
		{`user.department == "A" or device.managed`, nil, false},
	}
	for _, tt := range tests {
		x, err := ParseExpr(tt.cond)
		if err != nil {
			t.Fatal(err)
		}
		alts, exact := x.indexPlan()
		if exact != tt.exact || !slices.EqualFunc(alts, tt.alts, func(a, b Guard) bool {
			return a.Attr == b.Attr && slices.Equal(a.Values, b.Values)
		}) {
			t.Errorf("%s: plan %v exact=%v, want %v exact=%v", tt.cond, alts, exact, tt.alts, tt.exact)
		}
	}
}
