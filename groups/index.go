package groups

import "strings"

// indexPlan says how the membership index covers a condition. alts are
// guards at least one of which holds whenever x is true; nil means the
// index cannot narrow x down, so it is a candidate for every subject.
// exact means x is true exactly when one of alts holds — x is a single
// comparison like `user.department == "Finance"`, `user.title in [..]` or
// `"eng" in user.groups`, or an `or` of such — so a hit in the index is a
// membership and Casbin need not be asked.
func (x *Expr) indexPlan() (alts []Guard, exact bool) {
	if x == nil || x.root == nil {
		return nil, false
	}
	return x.root.indexPlan()
}

func (n *exprNode) indexPlan() (alts []Guard, exact bool) {
	switch {
	case n.op == exprOr:
		exact = true
		for _, k := range n.kids {
			ka, ke := k.indexPlan()
			if ka == nil {
				return nil, false
			}
			alts = append(alts, ka...)
			exact = exact && ke
		}
		return alts, exact
	case n.isComparison():
		if g := n.guards(nil); len(g) == 1 {
			return g, true
		}
		return nil, false
	}
	gs := n.guards(nil) // the guards of an and chain
	if len(gs) == 0 {
		return nil, false
	}
	best := gs[0]
	for _, g := range gs[1:] {
		if guardCost(g) < guardCost(best) {
			best = g
		}
	}
	return []Guard{best}, false
}

// guardCost orders guards by how many subjects they are likely to let
// through: fewer listed values first, and among equals, attributes that
// split people finely (departments, titles) before coarse ones (a device's
// platform, its posture profiles).
func guardCost(g Guard) int {
	rank := 0
	switch {
	case g.Attr == "device.platform", g.Attr == "device.profiles":
		rank = 2
	case g.Attr == "user.groups":
		rank = 1
	case strings.HasPrefix(g.Attr, "device."):
		rank = 0
	}
	return len(g.Values)*4 + rank
}
