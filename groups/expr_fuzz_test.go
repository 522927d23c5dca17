package groups

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzParseExpr: ParseExpr never panics and fails only with an *ExprError
// inside the source; what it accepts round-trips through String, loads in
// a real Casbin model, and Casbin agrees with Eval on subjects built from
// the condition's own strings; guards hold whenever the condition is true;
// Explain stays bounded.
func FuzzParseExpr(f *testing.F) {
	for _, tc := range exprValid {
		f.Add(tc.src)
	}
	for _, s := range []string{
		`user.x == "a" and "b" in user.groups or not (device.id in ["c", "d",]) && !device.managed || "e" not in device.profiles`,
		`user.x == "a r.b"`, `user.x == "3:04PM"`, `user.x == "2024-01-01"`, `user.x == "a;b"`, `user.x in ["a" "b"]`, `(((true)))`,
		`user.x == "é" || user.y != "보안"`, `user.x == "eval(1)"`, `"a" in user.x`, `user.groups == "a"`,
		`user.x == "[in]"`, `user.x == "a#b"`, `user.x == "a\b"`, "user.x == \"a'b\"", "user.x == \"a`b\"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, src string) {
		x, err := ParseExpr(src)
		if err != nil {
			var xe *ExprError
			if !errors.As(err, &xe) {
				t.Fatalf("error %T, want *ExprError", err)
			}
			if xe.Pos < 0 || xe.Pos > len(src) || xe.Msg == "" {
				t.Fatalf("bad error %+v for a %d-byte source", xe, len(src))
			}
			return
		}
		if x.String() != src {
			t.Fatalf("String() = %q, want %q", x.String(), src)
		}
		y, err := ParseExpr(x.String())
		if err != nil || y.Casbin() != x.Casbin() {
			t.Fatalf("reparse: %v, %q vs %q", err, y.Casbin(), x.Casbin())
		}
		refs := x.Refs()
		if !slices.IsSorted(refs) || len(slices.Compact(slices.Clone(refs))) != len(refs) {
			t.Fatalf("Refs %q not sorted and unique", refs)
		}
		if len(x.Casbin()) > maxExprCasbin || strings.ContainsAny(x.Casbin(), "\n\r") {
			t.Fatalf("Casbin form is %d bytes or not one line", len(x.Casbin()))
		}
		e, refs := exprEnforcer(t, []*Expr{x})
		for _, a := range exprFuzzSubjects(x) {
			want := x.Eval(a)
			if got := exprEnforce(t, e, 0, CasbinSubject(a, refs)); got != want {
				t.Fatalf("Casbin says %v, Eval %v over %+v\nmatcher %s", got, want, a, x.Casbin())
			}
			if want {
				for _, g := range x.Guards() {
					if !exprGuardHolds(g, a) {
						t.Fatalf("guard %+v does not hold over %+v, but the condition is true", g, a)
					}
				}
			}
			if ex := x.Explain(a); len(ex) > maxExplainLen || !utf8.ValidString(ex) {
				t.Fatalf("Explain is %d bytes or not UTF-8: %q", len(ex), ex)
			}
		}
	})
}

// exprFuzzSubjects builds subjects from x's own strings, so that comparisons
// come out both ways: every attribute set to the first string, to the
// last, and nothing set.
func exprFuzzSubjects(x *Expr) []*Attrs {
	var vals []string
	x.root.walk(func(n *exprNode) {
		if n.op == exprEq || n.op == exprHas {
			vals = append(vals, n.val)
		}
		vals = append(vals, n.vals...)
	})
	if len(vals) == 0 {
		vals = []string{""}
	}
	build := func(v string, lists []string, managed bool) *Attrs {
		a := &Attrs{User: map[string]string{}, Device: map[string]string{"id": v, "platform": v}, Groups: lists, Profiles: lists, Managed: managed}
		for _, r := range x.refs {
			if name, ok := strings.CutPrefix(r, "user."); ok {
				a.User[name] = v
			}
		}
		return a
	}
	return []*Attrs{
		build(vals[0], vals, true),
		build(vals[len(vals)-1], vals[len(vals)-1:], false),
		build("\xff"+vals[0], []string{vals[0] + "é"}, true),
		{},
	}
}

func exprGuardHolds(g Guard, a *Attrs) bool {
	ref, msg := exprRefOf(g.Attr)
	if msg != "" {
		return false
	}
	if ref.isList() {
		for _, v := range ref.list(a) {
			if slices.Contains(g.Values, v) {
				return true
			}
		}
		return false
	}
	return slices.Contains(g.Values, ref.str(a))
}
