package groups

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/casbin/casbin/v2"
	"github.com/casbin/casbin/v2/model"
	"github.com/casbin/govaluate"
)

// exprSubjects are the attribute sets the table tests evaluate against.
var exprSubjects = map[string]*Attrs{
	"alice": {
		User:     map[string]string{"id": "alice", "email": "alice@example.com", "department": "Security Tech", "title": "Security Engineer"},
		Groups:   []string{"engineering", "security"},
		Device:   map[string]string{"id": "dev-1", "platform": "linux"},
		Managed:  true,
		Profiles: []string{"baseline", "strict"},
	},
	"bob": {
		User:     map[string]string{"id": "bob", "email": "bob@example.com", "department": "Security Policy", "title": "Policy Manager"},
		Groups:   []string{"policy"},
		Device:   map[string]string{"id": "dev-2", "platform": "windows"},
		Managed:  true,
		Profiles: []string{"baseline"},
	},
	"carol": { // no device, no department or title
		User:   map[string]string{"id": "carol", "email": ""},
		Device: map[string]string{},
	},
	"dora": { // non-ASCII values
		User:    map[string]string{"id": "dora", "email": "dora@example.com", "department": "보안기술팀", "title": "Ingénieur"},
		Groups:  []string{"équipe"},
		Device:  map[string]string{"id": "dev-4", "platform": "macos"},
		Managed: true,
	},
	"none": {}, // the zero Attrs
}

var exprSubjectNames = []string{"alice", "bob", "carol", "dora", "none"}

// exprValid are valid conditions and the subjects (exprSubjects) for which
// they are true.
var exprValid = []struct{ src, trueFor string }{
	{`user.department == "Security Tech"`, "alice"},
	{`user.department != "Security Tech"`, "bob carol dora none"},
	{`user.department == "Security Tech" and user.title in ["Security Engineer", "Security Analyst"]`, "alice"},
	{`"engineering" in user.groups and not (device.platform == "windows")`, "alice"},
	{`device.managed and "strict" in device.profiles`, "alice"},
	{`device.managed`, "alice bob dora"},
	{`!device.managed`, "carol none"},
	{`not not device.managed`, "alice bob dora"},
	{`user.title not in ["Policy Manager", "Ingénieur"]`, "alice carol none"},
	{`"policy" not in user.groups`, "alice carol dora none"},
	{`user.department == "보안기술팀" || user.title == "Ingénieur"`, "dora"},
	{`"équipe" in user.groups`, "dora"},
	{`true`, "alice bob carol dora none"},
	{`false`, ""},
	{`not false`, "alice bob carol dora none"},
	{`user.department == ""`, "carol none"},                 // missing is ""
	{`user.title != "Intern"`, "alice bob carol dora none"}, // missing is not "Intern"
	{`device.id == ""`, "carol none"},
	{`(user.department == "Security Tech" || user.department == "Security Policy") && device.platform in ["linux", "windows"]`, "alice bob"},
	{`user.email == "alice@example.com"`, "alice"},
	{`device.platform in ["linux",]`, "alice"},
	{`user.id=="bob"&&device.managed`, "bob"},
	{"\tuser.id ==\n\"bob\"\r\n", "bob"},
	{`user.id == "carol" or user.id == "alice" and device.platform == "windows"`, "carol"}, // and binds tighter
	{`not user.id == "alice"`, "bob carol dora none"},                                      // not binds to the comparison
	{`"x" in device.profiles or device.id in ["dev-2"]`, "bob"},
	{`((((device.managed))))`, "alice bob dora"},
	{`user.department == "Security Tech" and (device.platform == "linux" or device.platform == "macos") and not "policy" in user.groups`, "alice"},
	{`user.department == "security tech"`, ""}, // case-sensitive
	{`user.x == "in" or user.x == "and" or user.x == "a, b" or user.x == "(x)"`, ""},
	{`user.department == "Security Tech" and user.department == "Security Policy"`, ""},
	{`user.title in ["", "Policy Manager"]`, "bob carol none"},
}

func TestParseExprEval(t *testing.T) {
	for _, tc := range exprValid {
		t.Run(tc.src, func(t *testing.T) {
			x, err := ParseExpr(tc.src)
			if err != nil {
				t.Fatalf("ParseExpr: %v", err)
			}
			if x.String() != tc.src {
				t.Errorf("String() = %q, want the source", x.String())
			}
			want := strings.Fields(tc.trueFor)
			for _, name := range exprSubjectNames {
				if got := x.Eval(exprSubjects[name]); got != slices.Contains(want, name) {
					t.Errorf("Eval(%s) = %v, want %v", name, got, !got)
				}
			}
			if x.Eval(nil) != x.Eval(&Attrs{}) {
				t.Errorf("Eval(nil) differs from Eval of the zero Attrs")
			}
		})
	}
}

func TestParseExprErrors(t *testing.T) {
	long := func(n int) string { return strings.Repeat("a", n) }
	list := func(n int) string {
		items := make([]string, n)
		for i := range items {
			items[i] = strconv.Quote(strconv.Itoa(i))
		}
		return "user.x in [" + strings.Join(items, ",") + "]"
	}
	nested := func(n int) string { return strings.Repeat("(", n) + "true" + strings.Repeat(")", n) }
	nots := func(n int) string { return strings.Repeat("not ", n) + "true" }
	// 513 nodes: 32 operands of 15 nots and a true, and one and.
	nodes := strings.Repeat(strings.Repeat("!", 15)+"true&&", 31) + strings.Repeat("!", 15) + "true"
	// Short in the source, long in Casbin: 3 + 24 bytes per operand.
	casbinLong := strings.Repeat("!device.managed||", 138) + "true"
	attrs := "use user.NAME, user.groups, device.id, device.platform, device.managed or device.profiles"
	reserved := ": it is reserved because conditions are compiled into a Casbin model"

	cases := []struct{ src, want string }{
		{``, `at column 1: empty condition`},
		{" \t\n", `at column 1: empty condition`},
		{`true or` + strings.Repeat(" ", 4090), `at column 4097: condition is longer than 4096 bytes`},
		{`usr.x == "a"`, `at column 1: unknown attribute "usr.x": ` + attrs},
		{`device.foo == "a"`, `at column 1: unknown device attribute "device.foo": use device.id, device.platform, device.managed or device.profiles`},
		{`true and user.Groups`, `at column 15: invalid user attribute name "Groups": names are lower-case letters, digits and _, start with a letter and are at most 64 bytes (did you mean user.groups?)`},
		{`user.department.x == "a"`, `at column 6: invalid user attribute name "department.x": names are lower-case letters, digits and _, start with a letter and are at most 64 bytes`},
		{`user.` + long(65) + ` == "a"`, `at column 6: invalid user attribute name "` + long(61) + `…": names are lower-case letters, digits and _, start with a letter and are at most 64 bytes`},
		{`user == "a"`, `at column 1: "user" needs an attribute name: ` + attrs},
		{`foo == "a"`, `at column 1: unknown word "foo": operators are ==, !=, in, not in, and (&&), or (||), not (!)`},
		{`user.x equals "a"`, `at column 8: unknown word "equals": operators are ==, !=, in, not in, and (&&), or (||), not (!)`},
		{`user.groups == "x"`, `at column 1: user.groups is a list: test whether it contains a string with "…" in user.groups`},
		{`device.profiles`, `at column 1: device.profiles is a list: test whether it contains a string with "…" in device.profiles`},
		{`device.managed == "x"`, `at column 16: device.managed is true or false: write device.managed or not device.managed`},
		{`device.managed in ["x"]`, `at column 16: device.managed is true or false: write device.managed or not device.managed`},
		{`user.x and true`, `at column 1: user.x is a string: compare it with ==, != or in, as in user.x == "…"`},
		{`user.x == "a" AND device.managed`, `at column 15: keywords are lower-case: write and, not AND`},
		{`True`, `at column 1: keywords are lower-case: write true, not True`},
		{`user.x = "a"`, `at column 8: use == to compare`},
		{`user.x == "a" & device.managed`, `at column 15: use && or and`},
		{`user.x == "a" | device.managed`, `at column 15: use || or or`},
		{`user.x == 'a'`, `at column 11: strings are written in double quotes: "…"`},
		{`user.x == "a`, `at column 11: unterminated string`},
		{`user.x == "a\"`, `at column 13: strings must not contain \` + reserved},
		{`user.x == "a#b"`, `at column 13: strings must not contain #` + reserved},
		{`user.x == "a;b"`, `at column 13: strings must not contain ;` + reserved},
		{`user.x == "a'b"`, `at column 13: strings must not contain '` + reserved},
		{"user.x == \"a`b\"", "at column 13: strings must not contain `" + reserved},
		{`user.x == "[a]"`, `at column 12: strings must not contain [` + reserved},
		{`user.x == "a]"`, `at column 13: strings must not contain ]` + reserved},
		{"user.x == \"a\tb\"", `at column 13: strings must not contain control characters`},
		{"user.x == \"a\x7f\"", `at column 13: strings must not contain control characters`},
		{"user.x == \"a\u0085\"", `at column 13: strings must not contain control characters`},
		{"user.x == \"a\xff\"", `at column 13: string is not valid UTF-8`},
		{`user.x == "2024-01-01"`, `at column 11: string "2024-01-01" looks like a date or time: Casbin's evaluator would turn it into a number, so it could never match`},
		{`"3:04PM" in user.groups`, `at column 1: string "3:04PM" looks like a date or time: Casbin's evaluator would turn it into a number, so it could never match`},
		{`user.x == "a r.b"`, `at column 14: strings must not contain "r." after a space, parenthesis or operator: Casbin would rewrite it`},
		{`user.x in ["a", "(p12.b"]`, `at column 19: strings must not contain "p12." after a space, parenthesis or operator: Casbin would rewrite it`},
		{`user.x == "eval(x)"`, `at column 12: strings must not contain "eval(": Casbin would treat it as a function call`},
		{`user.x == "` + long(257) + `"`, `at column 11: string is longer than 256 bytes`},
		{`user.x in []`, `at column 11: empty list`},
		{list(257), `at column ` + strconv.Itoa(strings.Index(list(257), `"256"`)+1) + `: list has more than 256 items`},
		{`user.x in ["a" "b"]`, `at column 16: unexpected string "b": expected , or ] to close the [ at column 11`},
		{`user.x in ["a",,]`, `at column 16: unexpected ",": lists hold strings only`},
		{`user.x in "a"`, `at column 11: unexpected string "a": expected a list after in, as in ["a", "b"]`},
		{`user.x in [user.y]`, `at column 12: unexpected user.y: lists hold strings only`},
		{`user.x in user.groups`, `at column 11: unexpected user.groups: expected a list after in, as in ["a", "b"]`},
		{`"a" in user.x`, `at column 8: user.x is not a list: a string can only be in user.groups or device.profiles (to compare user.x, write user.x == "…")`},
		{`"a" == user.x`, `at column 5: unexpected "==": expected in or not in after a string, as in "admins" in user.groups (an attribute comes first in ==, as in user.title == "Engineer")`},
		{`"a" in ["a"]`, `at column 8: unexpected "[": expected user.groups or device.profiles after in`},
		{`"a" not user.groups`, `at column 9: unexpected user.groups: expected in after not`},
		{`user.x not "a"`, `at column 12: unexpected string "a": expected in after not`},
		{`user.x == user.y`, `at column 11: cannot compare two attributes: compare user.x with a string`},
		{`user.x == true`, `at column 11: unexpected "true": expected a string after ==`},
		{`user.x ==`, `at column 10: unexpected end of condition: expected a string after ==`},
		{`(user.x == "a"`, `at column 15: unexpected end of condition: expected ) to close the ( at column 1`},
		{`user.x == "a")`, `at column 14: unmatched )`},
		{`user.x == "a" device.managed`, `at column 15: unexpected device.managed: expected and, or or the end of the condition`},
		{`user.x == "a" == "b"`, `at column 15: unexpected "==": expected and, or or the end of the condition`},
		{`not`, `at column 4: unexpected end of condition: expected a comparison, device.managed, true, false, not or (`},
		{`user.x == "a" and`, `at column 18: unexpected end of condition: expected a comparison, device.managed, true, false, not or (`},
		{`()`, `at column 2: unexpected ")": expected a comparison, device.managed, true, false, not or (`},
		{`["a"]`, `at column 1: unexpected "[": a list can only follow in, as in user.title in ["a", "b"]`},
		{`user.x == "é" é`, `at column 16: unexpected character 'é'`},
		{"true \xff", `at column 6: invalid UTF-8`},
		{`true ~ false`, `at column 6: unexpected character '~'`},
		{nested(33), `at column 33: parentheses and not are nested more than 32 deep`},
		{nots(33), `at column 129: parentheses and not are nested more than 32 deep`},
		{"not (" + nots(31) + "true)", `at column 126: parentheses and not are nested more than 32 deep`},
		{nodes, `at column 667: condition has more than 512 parts (comparisons, constants, and, or, not)`},
		{casbinLong, `at column 1: condition is too long once compiled for Casbin (4010 bytes, at most 4000): split it into several groups`},
	}
	for _, tc := range cases {
		name := tc.src
		if len(name) > 40 {
			name = name[:40]
		}
		t.Run(name, func(t *testing.T) {
			x, err := ParseExpr(tc.src)
			if err == nil {
				t.Fatalf("ParseExpr succeeded (%s), want %q", x.Casbin(), tc.want)
			}
			var xe *ExprError
			if !errors.As(err, &xe) {
				t.Fatalf("error %T, want *ExprError", err)
			}
			if err.Error() != tc.want {
				t.Errorf("error\n got %s\nwant %s", err, tc.want)
			}
			if xe.Pos < 0 || xe.Pos > len(tc.src) {
				t.Errorf("Pos %d outside the source (%d bytes)", xe.Pos, len(tc.src))
			}
		})
	}
}

// TestParseExprLimits checks that each limit admits its maximum.
func TestParseExprLimits(t *testing.T) {
	items := make([]string, maxExprList)
	for i := range items {
		items[i] = `"` + strconv.Itoa(i) + `"`
	}
	cases := []string{
		strings.Repeat("(", maxExprDepth) + "true" + strings.Repeat(")", maxExprDepth),
		strings.Repeat("!", maxExprDepth) + "true",
		strings.Repeat(strings.Repeat("!", 15)+"true&&", 31) + strings.Repeat("!", 14) + "true", // 512 nodes
		`user.x == "` + strings.Repeat("é", maxExprString/2) + `"`,
		`user.x in [` + strings.Join(items, ",") + `]`,
		`user.` + strings.Repeat("a", maxExprName) + ` == ""`,
		`true` + strings.Repeat(" ", maxExprLen-4),
		strings.Repeat("!device.managed||", 137) + "true", // 3981 bytes in Casbin
	}
	for _, src := range cases {
		x, err := ParseExpr(src)
		if err != nil {
			t.Errorf("ParseExpr(%.40q…): %v", src, err)
			continue
		}
		if len(x.Casbin()) > maxExprCasbin {
			t.Errorf("ParseExpr(%.40q…): Casbin form is %d bytes", src, len(x.Casbin()))
		}
	}
}

func TestExprCasbin(t *testing.T) {
	cases := []struct{ src, want string }{
		{`user.department == "Security Tech"`, `(r.sub.user_department == "Security Tech")`},
		{`user.title in ["A", "B"] and "x" in user.groups`, `((r.sub.user_title in ("A", "B")) && ("x" in r.sub.user_groups))`},
		{`not device.managed or user.x not in ["a"]`, `((!(r.sub.device_managed)) || (!(r.sub.user_x in ("a"))))`},
		{`"p" not in device.profiles`, `(!("p" in r.sub.device_profiles))`},
		{`device.id != "x" && device.platform == "y"`, `((r.sub.device_id != "x") && (r.sub.device_platform == "y"))`},
		{`true`, `(true)`},
		{`(false)`, `(false)`},
		{`user.a_b == "é"`, `(r.sub.user_a_b == "é")`},
	}
	for _, tc := range cases {
		x, err := ParseExpr(tc.src)
		if err != nil {
			t.Fatalf("ParseExpr(%q): %v", tc.src, err)
		}
		if got := x.Casbin(); got != tc.want {
			t.Errorf("Casbin(%q)\n got %s\nwant %s", tc.src, got, tc.want)
		}
	}
}

func TestExprRefs(t *testing.T) {
	cases := []struct {
		src  string
		want []string
	}{
		{`true`, nil},
		{`device.managed`, []string{"device.managed"}},
		{`device.managed and "x" in user.groups and user.department == "a" or user.department == "b" and device.id == "c" and "p" not in device.profiles and user.email in ["e"]`,
			[]string{"device.id", "device.managed", "device.profiles", "user.department", "user.email", "user.groups"}},
	}
	for _, tc := range cases {
		x, err := ParseExpr(tc.src)
		if err != nil {
			t.Fatalf("ParseExpr(%q): %v", tc.src, err)
		}
		if got := x.Refs(); !slices.Equal(got, tc.want) {
			t.Errorf("Refs(%q) = %q, want %q", tc.src, got, tc.want)
		}
	}
}

func TestExprGuards(t *testing.T) {
	cases := []struct {
		src  string
		want []Guard
	}{
		{`user.department == "Security Tech" and user.title in ["b", "a", "b"]`,
			[]Guard{{"user.department", []string{"Security Tech"}}, {"user.title", []string{"a", "b"}}}},
		{`"engineering" in user.groups`, []Guard{{"user.groups", []string{"engineering"}}}},
		{`device.platform in ["linux"]`, []Guard{{"device.platform", []string{"linux"}}}},
		{`device.managed and (user.x == "a" and "s" in device.profiles) and (user.y == "b" or true)`,
			[]Guard{{"user.x", []string{"a"}}, {"device.profiles", []string{"s"}}}},
		{`user.x == "a" or user.y == "b"`, nil},
		{`not (user.x == "a")`, nil},
		{`not user.x == "a" and device.managed`, nil},
		{`user.x != "a"`, nil},
		{`user.x not in ["a"]`, nil},
		{`"a" not in user.groups`, nil},
		{`true`, nil},
		{`device.managed`, nil},
	}
	for _, tc := range cases {
		x, err := ParseExpr(tc.src)
		if err != nil {
			t.Fatalf("ParseExpr(%q): %v", tc.src, err)
		}
		got := x.Guards()
		if len(got) != len(tc.want) || (len(got) > 0 && !reflect.DeepEqual(got, tc.want)) {
			t.Errorf("Guards(%q) = %v, want %v", tc.src, got, tc.want)
		}
		if len(got) > 0 { // the caller's copy is its own
			got[0].Values[0] = "changed"
			if x.Guards()[0].Values[0] == "changed" {
				t.Errorf("Guards(%q) shares its slices", tc.src)
			}
		}
	}
}

func TestExprExplain(t *testing.T) {
	bobWithoutTitle := &Attrs{User: map[string]string{"department": "Security Policy"}}
	huge := &Attrs{
		User:   map[string]string{"department": strings.Repeat("x\x00", 500)},
		Groups: slices.Repeat([]string{strings.Repeat("g", 100)}, 50),
	}
	cases := []struct {
		src  string
		a    *Attrs
		want string
	}{
		{`user.department == "Security Tech"`, exprSubjects["bob"],
			"`user.department == \"Security Tech\"` is false: user.department is \"Security Policy\""},
		{`user.department == "Security Tech"`, exprSubjects["alice"],
			"`user.department == \"Security Tech\"` is true: user.department is \"Security Tech\""},
		{`user.title != "Intern"`, bobWithoutTitle,
			"`user.title != \"Intern\"` is true: user.title is not set (\"\")"},
		// A false and: the first false operand.
		{`user.department == "Security Policy" and user.title in ["Security Engineer", "Security Analyst"] and device.managed`, exprSubjects["bob"],
			"`user.title in [\"Security Engineer\", \"Security Analyst\"]` is false: user.title is \"Policy Manager\""},
		// A true and: all operands.
		{`"engineering" in user.groups and not (device.platform == "windows")`, exprSubjects["alice"],
			"`\"engineering\" in user.groups` is true: user.groups is [\"engineering\", \"security\"]; `not (device.platform == \"windows\")` is true: device.platform is \"linux\""},
		// A true or: the first true operand.
		{`user.id == "x" or device.managed or true`, exprSubjects["dora"],
			"`device.managed` is true: device.managed is true"},
		// A false or: all operands, nested ones parenthesised.
		{`"strict" in device.profiles or (device.platform == "windows" and user.id == "bob") or (user.id == "a" or user.id == "b")`, exprSubjects["dora"],
			"`\"strict\" in device.profiles` is false: device.profiles is empty; `device.platform == \"windows\"` is false: device.platform is \"macos\"; (`user.id == \"a\"` is false: user.id is \"dora\"; `user.id == \"b\"` is false: user.id is \"dora\")"},
		{`not (user.id == "a" or user.id == "b")`, exprSubjects["dora"],
			"not (`user.id == \"a\"` is false: user.id is \"dora\"; `user.id == \"b\"` is false: user.id is \"dora\")"},
		{`!device.managed`, exprSubjects["carol"], "`not device.managed` is true: device.managed is false"},
		{`"policy" not in user.groups`, exprSubjects["bob"], "`\"policy\" not in user.groups` is false: user.groups is [\"policy\"]"},
		{`user.title not in ["Ingénieur"]`, exprSubjects["dora"], "`user.title not in [\"Ingénieur\"]` is false: user.title is \"Ingénieur\""},
		{`false`, nil, "`false` is false (a constant)"},
		{`not true`, nil, "`not true` is false (a constant)"},
		{`device.id == "dev-1"`, nil, "`device.id == \"dev-1\"` is false: device.id is not set (\"\")"},
		// Untrusted values are quoted and clipped.
		{`user.department == "x"`, huge,
			"`user.department == \"x\"` is false: user.department is \"" + strings.Repeat(`x\x00`, 32) + "\"…"},
		{`"g" in user.groups`, huge,
			"`\"g\" in user.groups` is false: user.groups is [" + strings.Join(slices.Repeat([]string{`"` + strings.Repeat("g", 64) + `"…`}, 5), ", ") + ", … 45 more]"},
	}
	for _, tc := range cases {
		x, err := ParseExpr(tc.src)
		if err != nil {
			t.Fatalf("ParseExpr(%q): %v", tc.src, err)
		}
		if got := x.Explain(tc.a); got != tc.want {
			t.Errorf("Explain(%q)\n got %s\nwant %s", tc.src, got, tc.want)
		}
	}
}

func TestExprExplainIsBounded(t *testing.T) {
	var ors []string
	for i := range 100 {
		ors = append(ors, fmt.Sprintf(`user.a%d == "%s"`, i, strings.Repeat("v", 10)))
	}
	x, err := ParseExpr(strings.Join(ors, " or "))
	if err != nil {
		t.Fatal(err)
	}
	a := &Attrs{User: map[string]string{}}
	for i := range 100 {
		a.User[fmt.Sprintf("a%d", i)] = strings.Repeat("\x01", 1000)
	}
	got := x.Explain(a)
	if len(got) > maxExplainLen || !strings.HasSuffix(got, "…") {
		t.Errorf("Explain is %d bytes, want at most %d ending in …", len(got), maxExplainLen)
	}
	if !strings.HasPrefix(got, "`user.a0 == \"vvvvvvvvvv\"` is false: user.a0 is \""+strings.Repeat(`\x01`, 64)+"\"…; ") {
		t.Errorf("Explain starts %.200q", got)
	}
}

func TestCasbinSubject(t *testing.T) {
	refs := []string{"device.id", "device.managed", "device.platform", "device.profiles", "user.department", "user.groups", "user.title", "no.such", "user.Bad"}
	got := CasbinSubject(exprSubjects["dora"], refs)
	want := map[string]any{
		"device_id":       "dev-4",
		"device_managed":  true,
		"device_platform": "macos",
		"device_profiles": []any{},
		"user_department": exprCasbinValue("보안기술팀"),
		"user_groups":     []any{exprCasbinValue("équipe")},
		"user_title":      exprCasbinValue("Ingénieur"),
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("CasbinSubject(dora)\n got %#v\nwant %#v", got, want)
	}
	got = CasbinSubject(nil, refs)
	want = map[string]any{
		"device_id": "", "device_managed": false, "device_platform": "", "device_profiles": []any{},
		"user_department": "", "user_groups": []any{}, "user_title": "",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("CasbinSubject(nil)\n got %#v\nwant %#v", got, want)
	}
	if e := exprCasbinValue("aé"); e != "aÃ©" {
		t.Errorf(`exprCasbinValue("aé") = %q, want "aÃ©"`, e)
	}
	if e := exprCasbinValue("\xff"); e != "ÿ" {
		t.Errorf(`exprCasbinValue("\xff") = %q, want "ÿ"`, e)
	}
}

// TestGovaluateTimeFormats checks looksLikeGovaluateTime against the
// lexer that matters: govaluate's.
func TestGovaluateTimeFormats(t *testing.T) {
	cases := []string{
		"2024-01-01", "2024-01-01 10:00", "2024-01-01 10:00:00", "2024-01-01 10:00:00+09:00", "2024-01-01T10Z",
		"2024-01-01T10:00:00Z", "2024-01-01T10:00:00.5+09:00", "3:04PM", "12:00AM", "Mon Jan  2 15:04:05 2006",
		"Mon Jan 02 15:04:05 -0700 2006", "Mon Jan 2 15:04:05 KST 2006",
		"2024-13-01", "2024-1-1", "12:00", "3:04 PM", "Security Tech", "", "2024", "01/02/2006", "10:00am",
	}
	var yes, no int
	for _, s := range cases {
		e, err := govaluate.NewEvaluableExpression(strconv.Quote(s))
		if err != nil {
			t.Fatalf("govaluate(%q): %v", s, err)
		}
		isTime := e.Tokens()[0].Kind == govaluate.TIME
		if got := looksLikeGovaluateTime(s); got != isTime {
			t.Errorf("looksLikeGovaluateTime(%q) = %v, govaluate says %v", s, got, isTime)
		}
		if isTime {
			yes++
		} else {
			no++
		}
	}
	if yes < 5 || no < 5 {
		t.Fatalf("cases exercise too little: %d times, %d not", yes, no)
	}
}

const exprTestModelHead = "[request_definition]\nr = sub\n[policy_definition]\np = grp\n[policy_effect]\ne = some(where (p.eft == allow))\n[matchers]\n"

func exprMatcher(i int) string {
	if i == 0 {
		return "m"
	}
	return "m" + strconv.Itoa(i+1)
}

// exprEnforcer builds a real Casbin model with one matcher per condition
// and returns it with the merged Refs.
func exprEnforcer(tb testing.TB, xs []*Expr) (*casbin.SyncedEnforcer, []string) {
	tb.Helper()
	var b strings.Builder
	b.WriteString(exprTestModelHead)
	var refs []string
	for i, x := range xs {
		fmt.Fprintf(&b, "%s = %s\n", exprMatcher(i), x.Casbin())
		refs = append(refs, x.Refs()...)
	}
	slices.Sort(refs)
	m, err := model.NewModelFromString(b.String())
	if err != nil {
		tb.Fatalf("casbin model: %v\n%s", err, b.String())
	}
	e, err := casbin.NewSyncedEnforcer(m)
	if err != nil {
		tb.Fatalf("casbin enforcer: %v", err)
	}
	return e, slices.Compact(refs)
}

func exprEnforce(tb testing.TB, e *casbin.SyncedEnforcer, i int, sub map[string]any) bool {
	tb.Helper()
	ok, err := e.Enforce(casbin.EnforceContext{RType: "r", PType: "p", EType: "e", MType: exprMatcher(i)}, sub)
	if err != nil {
		tb.Fatalf("Enforce %s: %v", exprMatcher(i), err)
	}
	return ok
}

// TestCasbinAgreesWithEval evaluates conditions with Casbin and in Go over
// fixed and random subjects: the two must agree everywhere.
func TestCasbinAgreesWithEval(t *testing.T) {
	srcs := []string{
		`user.x == "é"`, // fails if Casbin stops mangling non-ASCII literals (see CasbinSubject)
		`user.x in ["a", "보안", "Ingénieur"]`,
		`"é" in user.groups or "b" in device.profiles`,
		`user.x == "" and device.id != ""`,
		`user.y not in ["a", "b"] || !("a" not in user.groups)`,
		`device.managed && (device.platform == "linux" || device.platform == "macos")`,
		`user.x == "a, b" or user.x == "(x)" or user.x == "in" or user.x == "12" or user.x == "true" or user.x == "-1.5"`,
		`user.x == "a && b" or user.y == "=~ ." or user.x == "r_sub.x" or user.y == "p_x" or user.x == "?:"`,
		`user.x == "a=b" or user.x == "x.r.y" or user.x == "Kp." or user.x == "2024-1-1" or user.x == "   "`,
	}
	for _, tc := range exprValid {
		srcs = append(srcs, tc.src)
	}
	xs := make([]*Expr, len(srcs))
	for i, src := range srcs {
		var err error
		if xs[i], err = ParseExpr(src); err != nil {
			t.Fatalf("ParseExpr(%q): %v", src, err)
		}
	}
	e, refs := exprEnforcer(t, xs)

	subjects := make([]*Attrs, 0, 600)
	for _, name := range exprSubjectNames {
		subjects = append(subjects, exprSubjects[name])
	}
	values := []string{"", "a", "b", "é", "보안", "Ingénieur", "Security Tech", "Security Policy", "linux", "macos", "windows",
		"engineering", "policy", "équipe", "strict", "dev-1", "dev-2", "alice", "bob", "carol", "a, b", "(x)", "in", "12", "true",
		"-1.5", "a && b", "=~ .", "r_sub.x", "p_x", "?:", "a=b", "x.r.y", "Kp.", "2024-1-1", "   ", "\xff", "Ã©", "Intern", "security tech"}
	rng := rand.New(rand.NewPCG(1, 2))
	pick := func() string { return values[rng.IntN(len(values))] }
	some := func() []string {
		var l []string
		for range rng.IntN(4) {
			l = append(l, pick())
		}
		return l
	}
	for range 600 {
		a := &Attrs{User: map[string]string{}, Device: map[string]string{}, Groups: some(), Profiles: some(), Managed: rng.IntN(2) == 0}
		for _, k := range []string{"x", "y", "id", "email", "department", "title"} {
			if rng.IntN(4) != 0 {
				a.User[k] = pick()
			}
		}
		for _, k := range []string{"id", "platform"} {
			if rng.IntN(4) != 0 {
				a.Device[k] = pick()
			}
		}
		subjects = append(subjects, a)
	}

	outcomes := make([][2]int, len(xs))
	for _, a := range subjects {
		sub := CasbinSubject(a, refs)
		for i, x := range xs {
			want := x.Eval(a)
			if got := exprEnforce(t, e, i, sub); got != want {
				t.Fatalf("%q over %+v: Casbin says %v, Eval %v\nmatcher %s", x, a, got, want, x.Casbin())
			}
			outcomes[i][exprB2I(want)]++
		}
	}
	// Guard the generator: every condition that can be both true and false
	// must have been seen both ways.
	for i, x := range xs {
		constant := x.String() == "true" || x.String() == "false" || x.String() == "not false" ||
			strings.Contains(x.String(), `"Security Tech" and user.department == "Security Policy"`)
		if !constant && (outcomes[i][0] == 0 || outcomes[i][1] == 0) {
			t.Errorf("%q was never %v over %d subjects", x, outcomes[i][1] != 0, len(subjects))
		}
	}
}

func exprB2I(b bool) int {
	if b {
		return 1
	}
	return 0
}

func TestExprConcurrentUse(t *testing.T) {
	x, err := ParseExpr(`user.department == "Security Tech" and "engineering" in user.groups`)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for _, name := range exprSubjectNames {
		wg.Go(func() {
			for range 100 {
				x.Eval(exprSubjects[name])
				x.Explain(exprSubjects[name])
				x.Guards()
				x.Refs()
			}
		})
	}
	wg.Wait()
}

func BenchmarkExprEval(b *testing.B) {
	x, err := ParseExpr(`user.department == "Security Tech" and user.title in ["Security Engineer", "Security Analyst"] and "engineering" in user.groups and not (device.platform == "windows")`)
	if err != nil {
		b.Fatal(err)
	}
	a := exprSubjects["alice"]
	b.ReportAllocs()
	for b.Loop() {
		if !x.Eval(a) {
			b.Fatal("false")
		}
	}
}
