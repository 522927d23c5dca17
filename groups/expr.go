package groups

// The group condition language: a group's `when:` is an expression over
// the request's attributes (Attrs), for example
//
//	user.department == "Security Tech" and user.title in ["Security Engineer", "Security Analyst"]
//	"engineering" in user.groups and not (device.platform == "windows")
//	device.managed and "strict" in device.profiles
//
// A condition is evaluated twice over: by Casbin, which decides membership
// (Expr.Casbin is one matcher of the generated model), and in Go (Expr.Eval),
// which explains decisions and cross-checks Casbin. The two must agree on
// every input, so the language is deliberately small, and every string
// that would not survive the trip through Casbin's model parser and its
// expression evaluator (govaluate) unchanged is rejected when the policy
// is loaded, with an error that says why, instead of silently never
// matching.

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Limits on a condition. They bound parsing, evaluation and explanation
// work: conditions come from policy files, attribute values from the IdP.
const (
	maxExprLen     = 4096 // bytes of source
	maxExprDepth   = 32   // nested parentheses and not
	maxExprNodes   = 512  // comparisons, constants, and, or, not
	maxExprString  = 256  // bytes in one string literal
	maxExprList    = 256  // items in one [list]
	maxExprName    = 64   // bytes in the NAME of user.NAME
	maxExprCasbin  = 4000 // bytes of Casbin matcher; see ParseExpr
	maxExplainLen  = 1024 // bytes of Explain output
	maxExplainVal  = 64   // bytes of one attribute value in Explain
	maxExplainAtom = 160  // bytes of one quoted comparison in Explain
	maxExplainList = 5    // list items shown in Explain
)

// Expr is a parsed, validated condition. Immutable, safe for concurrent use.
//
// Semantics: string comparison is exact and case-sensitive (no folding, no
// normalisation). A user attribute the subject does not have is "" — so
// `user.title != "Intern"` is true for a user without a title, and
// `user.title == ""` is true for one. device.id and device.platform are ""
// without a device, device.managed is false and device.profiles and
// user.groups are empty lists when absent.
type Expr struct {
	src    string
	root   *exprNode
	casbin string
	refs   []string
	guards []Guard
}

// ExprError is a syntax or validation error. Pos is the byte offset in the
// source (0-based) where the problem starts; Msg does not repeat the
// position.
type ExprError struct {
	Pos int
	Msg string
}

func (e *ExprError) Error() string { return fmt.Sprintf("at column %d: %s", e.Pos+1, e.Msg) }

// Guard is an index key of a condition: if the condition is true, the
// attribute Attr has one of Values (for a list attribute such as
// user.groups: contains one of Values).
type Guard struct {
	Attr   string   // as in Refs
	Values []string // sorted, without duplicates
}

// ParseExpr parses and validates a condition. The error is always an
// *ExprError.
//
// Grammar (whitespace is insignificant, keywords are lower-case):
//
//	expr       := or
//	or         := and { ("or" | "||") and }
//	and        := unary { ("and" | "&&") unary }
//	unary      := ("not" | "!") unary | primary
//	primary    := "(" expr ")" | comparison | "device.managed" | "true" | "false"
//	comparison := strref ("==" | "!=") STRING
//	            | strref ["not"] "in" LIST       the attribute is one of the list
//	            | STRING ["not"] "in" listref    the list attribute contains the string
//	strref     := user.NAME | device.id | device.platform
//	listref    := user.groups | device.profiles
//	LIST       := "[" STRING { "," STRING } [","] "]"
//
// NAME is [a-z][a-z0-9_]{0,63} and not "groups"; user.id and user.email
// are ordinary names. A STRING is double-quoted, at most 256 bytes of valid
// UTF-8 without escapes. Because every string is copied into a Casbin
// model, a string may not contain what Casbin's model parser or evaluator
// would reinterpret: control characters, `"`, `\`, `'`, backtick, `#` and
// `;` (comments), `[` and `]` (Casbin rewrites them), "eval(", `r.` or `p.`
// after a space, parenthesis or operator (Casbin rewrites them), and it
// may not look like a date or time (govaluate turns those into numbers).
// Limits: 4096 bytes of source, 32 levels of parentheses and not, 512
// nodes, 256 list items, and 4000 bytes once written as a Casbin matcher
// (Casbin's model parser cannot read longer lines).
func ParseExpr(src string) (x *Expr, err error) {
	if strings.TrimSpace(src) == "" {
		return nil, &ExprError{Pos: 0, Msg: "empty condition"}
	}
	if len(src) > maxExprLen {
		return nil, &ExprError{Pos: maxExprLen, Msg: fmt.Sprintf("condition is longer than %d bytes", maxExprLen)}
	}
	defer func() {
		if r := recover(); r != nil {
			e, ok := r.(*ExprError)
			if !ok {
				panic(r)
			}
			x, err = nil, e
		}
	}()
	p := &exprParser{src: src}
	p.next()
	root := p.or()
	if p.tok.kind != tokEOF {
		if p.tok.kind == tokRParen {
			p.fail(p.tok.pos, "unmatched )")
		}
		p.fail(p.tok.pos, "unexpected "+p.tok.describe()+": expected and, or or the end of the condition")
	}
	x = &Expr{src: src, root: root}
	var b strings.Builder
	root.writeCasbin(&b)
	x.casbin = b.String()
	if len(x.casbin) > maxExprCasbin {
		return nil, &ExprError{Pos: 0, Msg: fmt.Sprintf("condition is too long once compiled for Casbin (%d bytes, at most %d): split it into several groups", len(x.casbin), maxExprCasbin)}
	}
	refs := map[string]bool{}
	root.walk(func(n *exprNode) {
		if n.op >= exprEq {
			refs[n.ref.String()] = true
		}
	})
	for r := range refs {
		x.refs = append(x.refs, r)
	}
	slices.Sort(x.refs)
	x.guards = root.guards(nil)
	return x, nil
}

// String returns the source as given to ParseExpr.
func (x *Expr) String() string {
	if x == nil {
		return ""
	}
	return x.src
}

// Eval evaluates x for a in Go. It agrees with Casbin evaluating
// x.Casbin() over CasbinSubject(a, x.Refs()). A nil a is a subject without
// attributes; a zero Expr is false.
func (x *Expr) Eval(a *Attrs) bool {
	if x == nil || x.root == nil {
		return false
	}
	if a == nil {
		a = &Attrs{}
	}
	return x.root.eval(a)
}

// Explain says why x is true or false for a, for example
//
//	`user.department == "Security Tech"` is false: user.department is "Security Policy"
//
// Every comparison it names says its outcome and the attribute's value.
// For and and or it names the deciding operands: the first false operand
// of a false and, the first true operand of a true or, otherwise all of
// them, separated by "; " (parenthesised when nested). A negated
// comparison is shown as one (`not (…)`); another negation as not (…).
// The output is at most 1 KiB; attribute values, which are untrusted,
// are clipped at 64 bytes and quoted with strconv.Quote.
func (x *Expr) Explain(a *Attrs) string {
	if x == nil || x.root == nil {
		return "no condition"
	}
	if a == nil {
		a = &Attrs{}
	}
	var b strings.Builder
	x.root.explain(&b, a, true)
	return exprClip(b.String(), maxExplainLen)
}

// Casbin returns x as a Casbin (govaluate) matcher over the request
// subject r.sub built by CasbinSubject: user.NAME is r.sub.user_NAME,
// device.id is r.sub.device_id and so on; and, or and not are &&, || and
// !; `a in ["x", "y"]` is `a in ("x", "y")`; `"x" in user.groups` is
// `"x" in r.sub.user_groups`; not in is !(… in …). It is fully
// parenthesised, one line, at most 4000 bytes.
func (x *Expr) Casbin() string {
	if x == nil || x.root == nil {
		return "(false)"
	}
	return x.casbin
}

// Refs lists the attributes x reads, as written ("device.managed",
// "user.department", "user.groups", …), sorted, without duplicates.
func (x *Expr) Refs() []string {
	if x == nil {
		return nil
	}
	return slices.Clone(x.refs)
}

// Guards returns index keys for x: one for each operand of the top-level
// and chain (or for the whole condition when it is a single comparison) of
// the form `strref == "v"`, `strref in [...]` or `"v" in listref`. If x is
// true, every guard holds. It is empty when no such comparison is at the
// top level, e.g. for a top-level or, not, != or not in.
func (x *Expr) Guards() []Guard {
	if x == nil {
		return nil
	}
	out := make([]Guard, len(x.guards))
	for i, g := range x.guards {
		out[i] = Guard{Attr: g.Attr, Values: slices.Clone(g.Values)}
	}
	return out
}

// CasbinSubject builds the r.sub map that Casbin matchers from Expr.Casbin
// read, for the attributes refs (as returned by Refs, possibly of several
// conditions merged). Every valid ref gets a key, since govaluate fails on
// a missing one: a user attribute a lacks is "", lists are []any of
// strings (govaluate's in needs []any), device.managed is a bool. Refs
// that are not attributes are ignored (Casbin then fails, which is a deny).
//
// Values are encoded the way Casbin 2.135 mangles the string literals of a
// matcher: its EscapeStringLiterals rewrites every byte ≥ 0x80 as the rune
// of that value, so the literal "é" reaches govaluate as "Ã©". Encoding the
// subject's values the same way (an injective map) makes non-ASCII values
// compare exactly; TestCasbinAgreesWithEval fails if Casbin changes this.
func CasbinSubject(a *Attrs, refs []string) map[string]any {
	if a == nil {
		a = &Attrs{}
	}
	sub := make(map[string]any, len(refs))
	for _, r := range refs {
		ref, msg := exprRefOf(r)
		if msg != "" {
			continue
		}
		switch ref.kind {
		case exprRefManaged:
			sub[ref.key()] = a.Managed
		case exprRefGroups, exprRefProfiles:
			list := ref.list(a)
			v := make([]any, len(list))
			for i, s := range list {
				v[i] = exprCasbinValue(s)
			}
			sub[ref.key()] = v
		default:
			sub[ref.key()] = exprCasbinValue(ref.str(a))
		}
	}
	return sub
}

// exprCasbinValue applies to s what Casbin's EscapeStringLiterals does to the
// bytes of a matcher: each byte becomes the rune with the byte's value.
func exprCasbinValue(s string) string {
	i := 0
	for i < len(s) && s[i] < utf8.RuneSelf {
		i++
	}
	if i == len(s) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + (len(s) - i))
	b.WriteString(s[:i])
	for ; i < len(s); i++ {
		b.WriteRune(rune(s[i]))
	}
	return b.String()
}

// Attribute references.

type exprRefKind uint8

const (
	exprRefUser           exprRefKind = iota // user.NAME
	exprRefDeviceID                          // device.id
	exprRefDevicePlatform                    // device.platform
	exprRefGroups                            // user.groups
	exprRefProfiles                          // device.profiles
	exprRefManaged                           // device.managed
)

type exprRef struct {
	kind exprRefKind
	name string // of user.NAME
}

const exprAttrList = "user.NAME, user.groups, device.id, device.platform, device.managed or device.profiles"

// exprRefOf parses an attribute reference; msg says what is wrong with it.
func exprRefOf(w string) (r exprRef, msg string) {
	root, rest, dot := strings.Cut(w, ".")
	switch {
	case !dot && (root == "user" || root == "device"):
		return r, fmt.Sprintf("%q needs an attribute name: use %s", w, exprAttrList)
	case root == "user" && rest == "groups":
		return exprRef{kind: exprRefGroups}, ""
	case root == "user":
		if !isExprName(rest) {
			hint := ""
			if strings.ToLower(rest) == "groups" {
				hint = " (did you mean user.groups?)"
			}
			return r, fmt.Sprintf("invalid user attribute name %s: names are lower-case letters, digits and _, start with a letter and are at most %d bytes%s", strconv.Quote(exprClip(rest, maxExplainVal)), maxExprName, hint)
		}
		return exprRef{kind: exprRefUser, name: rest}, ""
	case root == "device":
		switch rest {
		case "id":
			return exprRef{kind: exprRefDeviceID}, ""
		case "platform":
			return exprRef{kind: exprRefDevicePlatform}, ""
		case "profiles":
			return exprRef{kind: exprRefProfiles}, ""
		case "managed":
			return exprRef{kind: exprRefManaged}, ""
		}
		return r, fmt.Sprintf("unknown device attribute %s: use device.id, device.platform, device.managed or device.profiles", strconv.Quote(exprClip(w, maxExplainVal)))
	}
	return r, fmt.Sprintf("unknown attribute %s: use %s", strconv.Quote(exprClip(w, maxExplainVal)), exprAttrList)
}

func isExprName(s string) bool {
	if len(s) == 0 || len(s) > maxExprName || s[0] < 'a' || s[0] > 'z' {
		return false
	}
	for i := 1; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '_') {
			return false
		}
	}
	return s != "groups"
}

func (r exprRef) String() string {
	switch r.kind {
	case exprRefDeviceID:
		return "device.id"
	case exprRefDevicePlatform:
		return "device.platform"
	case exprRefGroups:
		return "user.groups"
	case exprRefProfiles:
		return "device.profiles"
	case exprRefManaged:
		return "device.managed"
	}
	return "user." + r.name
}

// key is the r.sub map key of r.
func (r exprRef) key() string { return strings.Replace(r.String(), ".", "_", 1) }

func (r exprRef) isList() bool { return r.kind == exprRefGroups || r.kind == exprRefProfiles }

// lookup returns the value of a string attribute and whether it is set.
func (r exprRef) lookup(a *Attrs) (string, bool) {
	switch r.kind {
	case exprRefUser:
		v, ok := a.User[r.name]
		return v, ok
	case exprRefDeviceID:
		v, ok := a.Device["id"]
		return v, ok
	case exprRefDevicePlatform:
		v, ok := a.Device["platform"]
		return v, ok
	}
	return "", false
}

func (r exprRef) str(a *Attrs) string {
	v, _ := r.lookup(a)
	return v
}

func (r exprRef) list(a *Attrs) []string {
	if r.kind == exprRefGroups {
		return a.Groups
	}
	return a.Profiles
}

// The syntax tree.

type exprOp uint8

const (
	exprTrue exprOp = iota
	exprFalse
	exprAnd
	exprOr
	exprNot
	// Comparisons; every op from here on reads ref.
	exprEq      // ref == val (neg: !=)
	exprIn      // ref in vals (neg: not in)
	exprHas     // val in ref, a list attribute (neg: not in)
	exprManaged // device.managed
)

type exprNode struct {
	op   exprOp
	neg  bool
	ref  exprRef
	val  string
	vals []string
	kids []*exprNode // and, or: two or more; not: one
}

func (n *exprNode) eval(a *Attrs) bool {
	switch n.op {
	case exprTrue:
		return true
	case exprAnd:
		for _, k := range n.kids {
			if !k.eval(a) {
				return false
			}
		}
		return true
	case exprOr:
		for _, k := range n.kids {
			if k.eval(a) {
				return true
			}
		}
		return false
	case exprNot:
		return !n.kids[0].eval(a)
	case exprEq:
		return (n.ref.str(a) == n.val) != n.neg
	case exprIn:
		return slices.Contains(n.vals, n.ref.str(a)) != n.neg
	case exprHas:
		return slices.Contains(n.ref.list(a), n.val) != n.neg
	case exprManaged:
		return a.Managed
	}
	return false
}

func (n *exprNode) walk(fn func(*exprNode)) {
	fn(n)
	for _, k := range n.kids {
		k.walk(fn)
	}
}

func (n *exprNode) isComparison() bool { return n.op != exprAnd && n.op != exprOr && n.op != exprNot }

// guards appends the guards of the and chain rooted at n.
func (n *exprNode) guards(out []Guard) []Guard {
	switch {
	case n.op == exprAnd:
		for _, k := range n.kids {
			out = k.guards(out)
		}
	case n.neg:
	case n.op == exprEq || n.op == exprHas:
		out = append(out, Guard{Attr: n.ref.String(), Values: []string{n.val}})
	case n.op == exprIn:
		vals := slices.Clone(n.vals)
		slices.Sort(vals)
		out = append(out, Guard{Attr: n.ref.String(), Values: slices.Compact(vals)})
	}
	return out
}

// writeCasbin writes n as a govaluate expression in Casbin's notation.
// Strings are written as they are: the lexer admits none that Casbin or
// govaluate would reinterpret.
func (n *exprNode) writeCasbin(b *strings.Builder) {
	b.WriteByte('(')
	switch n.op {
	case exprTrue:
		b.WriteString("true")
	case exprFalse:
		b.WriteString("false")
	case exprAnd, exprOr:
		sep := " && "
		if n.op == exprOr {
			sep = " || "
		}
		for i, k := range n.kids {
			if i > 0 {
				b.WriteString(sep)
			}
			k.writeCasbin(b)
		}
	case exprNot:
		b.WriteByte('!')
		n.kids[0].writeCasbin(b)
	case exprManaged:
		b.WriteString("r.sub.device_managed")
	case exprEq:
		b.WriteString("r.sub." + n.ref.key())
		if n.neg {
			b.WriteString(" != ")
		} else {
			b.WriteString(" == ")
		}
		b.WriteString(`"` + n.val + `"`)
	case exprIn, exprHas:
		if n.neg {
			b.WriteString("!(")
		}
		if n.op == exprIn {
			b.WriteString("r.sub." + n.ref.key() + " in (")
			for i, v := range n.vals {
				if i > 0 {
					b.WriteString(", ")
				}
				b.WriteString(`"` + v + `"`)
			}
			b.WriteByte(')')
		} else {
			b.WriteString(`"` + n.val + `" in r.sub.` + n.ref.key())
		}
		if n.neg {
			b.WriteByte(')')
		}
	}
	b.WriteByte(')')
}

// source writes a comparison in canonical source form.
func (n *exprNode) source(b *strings.Builder) {
	switch n.op {
	case exprTrue:
		b.WriteString("true")
	case exprFalse:
		b.WriteString("false")
	case exprManaged:
		b.WriteString("device.managed")
	case exprEq:
		b.WriteString(n.ref.String())
		if n.neg {
			b.WriteString(" != ")
		} else {
			b.WriteString(" == ")
		}
		b.WriteString(`"` + n.val + `"`)
	case exprIn:
		b.WriteString(n.ref.String())
		if n.neg {
			b.WriteString(" not")
		}
		b.WriteString(" in [")
		for i, v := range n.vals {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString(`"` + v + `"`)
			if b.Len() > maxExplainAtom {
				break
			}
		}
		b.WriteByte(']')
	case exprHas:
		b.WriteString(`"` + n.val + `"`)
		if n.neg {
			b.WriteString(" not")
		}
		b.WriteString(" in " + n.ref.String())
	}
}

func (n *exprNode) explain(b *strings.Builder, a *Attrs, top bool) {
	if b.Len() > maxExplainLen {
		return
	}
	v := n.eval(a)
	switch {
	case n.op == exprAnd || n.op == exprOr:
		deciding := n.kids
		// A false and is decided by its first false operand, a true or by
		// its first true one.
		if (n.op == exprAnd) != v {
			for _, k := range n.kids {
				if k.eval(a) == v {
					deciding = []*exprNode{k}
					break
				}
			}
		}
		paren := !top && len(deciding) > 1
		if paren {
			b.WriteByte('(')
		}
		for i, k := range deciding {
			if i > 0 {
				b.WriteString("; ")
			}
			k.explain(b, a, false)
		}
		if paren {
			b.WriteByte(')')
		}
	case n.op == exprNot && n.kids[0].isComparison():
		n.kids[0].explainComparison(b, a, true, v)
	case n.op == exprNot:
		b.WriteString("not (")
		n.kids[0].explain(b, a, true)
		b.WriteByte(')')
	default:
		n.explainComparison(b, a, false, v)
	}
}

// explainComparison writes "`comparison` is v: attribute is value".
func (n *exprNode) explainComparison(b *strings.Builder, a *Attrs, negated, v bool) {
	var s strings.Builder
	switch {
	case !negated:
	case n.op == exprTrue || n.op == exprFalse || n.op == exprManaged:
		s.WriteString("not ")
	default:
		s.WriteString("not (")
	}
	n.source(&s)
	if negated && n.op >= exprEq && n.op != exprManaged {
		s.WriteByte(')')
	}
	b.WriteString("`" + exprClip(s.String(), maxExplainAtom) + "` is " + strconv.FormatBool(v))
	switch n.op {
	case exprTrue, exprFalse:
		b.WriteString(" (a constant)")
	case exprManaged:
		b.WriteString(": device.managed is " + strconv.FormatBool(a.Managed))
	case exprHas:
		b.WriteString(": " + n.ref.String() + " is ")
		list := n.ref.list(a)
		if len(list) == 0 {
			b.WriteString("empty")
			break
		}
		b.WriteByte('[')
		for i, item := range list {
			if i == maxExplainList {
				fmt.Fprintf(b, ", … %d more", len(list)-i)
				break
			}
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString(exprQuote(item))
		}
		b.WriteByte(']')
	default:
		b.WriteString(": " + n.ref.String())
		if s, ok := n.ref.lookup(a); ok {
			b.WriteString(" is " + exprQuote(s))
		} else {
			b.WriteString(` is not set ("")`)
		}
	}
}

// exprQuote quotes an untrusted value for Explain, clipped at
// maxExplainVal bytes.
func exprQuote(s string) string {
	if len(s) <= maxExplainVal {
		return strconv.Quote(s)
	}
	return strconv.Quote(exprClipBytes(s, maxExplainVal)) + "…"
}

// exprClip cuts s to at most max bytes, ending in "…" when cut.
func exprClip(s string, max int) string {
	if len(s) <= max {
		return s
	}
	return exprClipBytes(s, max-len("…")) + "…"
}

// exprClipBytes cuts s to at most n bytes without splitting a UTF-8 sequence.
func exprClipBytes(s string, n int) string {
	if len(s) <= n {
		return s
	}
	i := n
	for i > 0 && i > n-utf8.UTFMax && !utf8.RuneStart(s[i]) {
		i--
	}
	if !utf8.RuneStart(s[i]) {
		i = n // not UTF-8 here; cut anywhere
	}
	return s[:i]
}

// The parser: recursive descent over a one-token lookahead lexer, so that
// the first problem in the source is the one reported. Errors are raised
// with panic(*ExprError) and recovered by ParseExpr.

type exprTokKind uint8

const (
	tokEOF exprTokKind = iota
	tokRef
	tokString
	tokAnd
	tokOr
	tokNot
	tokIn
	tokTrue
	tokFalse
	tokEq
	tokNe
	tokLParen
	tokRParen
	tokLBrack
	tokRBrack
	tokComma
)

type exprToken struct {
	kind exprTokKind
	pos  int
	text string  // as written; for tokString, the contents
	ref  exprRef // of tokRef
}

func (t exprToken) describe() string {
	switch t.kind {
	case tokEOF:
		return "end of condition"
	case tokString:
		return "string " + strconv.Quote(exprClip(t.text, maxExplainVal))
	case tokRef:
		return t.text
	}
	return strconv.Quote(t.text)
}

var exprKeywords = map[string]exprTokKind{
	"and": tokAnd, "or": tokOr, "not": tokNot, "in": tokIn, "true": tokTrue, "false": tokFalse,
}

type exprParser struct {
	src   string
	off   int // lexer offset
	tok   exprToken
	depth int
	nodes int
}

func (p *exprParser) fail(pos int, msg string) {
	panic(&ExprError{Pos: pos, Msg: msg})
}

// node counts a new node against the limit.
func (p *exprParser) node(pos int, n *exprNode) *exprNode {
	p.nodes++
	if p.nodes > maxExprNodes {
		p.fail(pos, fmt.Sprintf("condition has more than %d parts (comparisons, constants, and, or, not)", maxExprNodes))
	}
	return n
}

func (p *exprParser) enter(pos int) {
	p.depth++
	if p.depth > maxExprDepth {
		p.fail(pos, fmt.Sprintf("parentheses and not are nested more than %d deep", maxExprDepth))
	}
}

func (p *exprParser) or() *exprNode {
	first := p.and()
	if p.tok.kind != tokOr {
		return first
	}
	n := p.node(p.tok.pos, &exprNode{op: exprOr, kids: []*exprNode{first}})
	for p.tok.kind == tokOr {
		p.next()
		n.kids = append(n.kids, p.and())
	}
	return n
}

func (p *exprParser) and() *exprNode {
	first := p.unary()
	if p.tok.kind != tokAnd {
		return first
	}
	n := p.node(p.tok.pos, &exprNode{op: exprAnd, kids: []*exprNode{first}})
	for p.tok.kind == tokAnd {
		p.next()
		n.kids = append(n.kids, p.unary())
	}
	return n
}

func (p *exprParser) unary() *exprNode {
	if p.tok.kind != tokNot {
		return p.primary()
	}
	pos := p.tok.pos
	p.enter(pos)
	n := p.node(pos, &exprNode{op: exprNot})
	p.next()
	n.kids = []*exprNode{p.unary()}
	p.depth--
	return n
}

func (p *exprParser) primary() *exprNode {
	t := p.tok
	switch t.kind {
	case tokLParen:
		p.enter(t.pos)
		p.next()
		n := p.or()
		if p.tok.kind != tokRParen {
			p.fail(p.tok.pos, fmt.Sprintf("unexpected %s: expected ) to close the ( at column %d", p.tok.describe(), t.pos+1))
		}
		p.next()
		p.depth--
		return n
	case tokTrue, tokFalse:
		p.next()
		op := exprTrue
		if t.kind == tokFalse {
			op = exprFalse
		}
		return p.node(t.pos, &exprNode{op: op})
	case tokString:
		return p.membership(t)
	case tokRef:
		return p.comparison(t)
	case tokEOF:
		p.fail(t.pos, "unexpected end of condition: expected a comparison, device.managed, true, false, not or (")
	case tokLBrack:
		p.fail(t.pos, `unexpected "[": a list can only follow in, as in user.title in ["a", "b"]`)
	}
	p.fail(t.pos, "unexpected "+t.describe()+": expected a comparison, device.managed, true, false, not or (")
	return nil
}

// membership parses `"v" [not] in listref`; p.tok is the string.
func (p *exprParser) membership(s exprToken) *exprNode {
	p.next()
	neg := p.notIn(`expected in or not in after a string, as in "admins" in user.groups (an attribute comes first in ==, as in user.title == "Engineer")`)
	t := p.tok
	if t.kind != tokRef || !t.ref.isList() {
		msg := "unexpected " + t.describe() + ": expected user.groups or device.profiles after in"
		if t.kind == tokRef {
			msg = t.text + " is not a list: a string can only be in user.groups or device.profiles (to compare " + t.text + ", write " + t.text + ` == "…")`
		}
		p.fail(t.pos, msg)
	}
	p.next()
	return p.node(s.pos, &exprNode{op: exprHas, neg: neg, ref: t.ref, val: s.text})
}

// notIn consumes "in" or "not in" and reports whether it was "not in".
func (p *exprParser) notIn(msg string) bool {
	neg := false
	if p.tok.kind == tokNot {
		neg = true
		p.next()
		if p.tok.kind != tokIn {
			p.fail(p.tok.pos, "unexpected "+p.tok.describe()+": expected in after not")
		}
	} else if p.tok.kind != tokIn {
		p.fail(p.tok.pos, "unexpected "+p.tok.describe()+": "+msg)
	}
	p.next()
	return neg
}

// comparison parses what starts with an attribute; p.tok is it.
func (p *exprParser) comparison(r exprToken) *exprNode {
	name := r.text
	p.next()
	t := p.tok
	switch {
	case r.ref.kind == exprRefManaged:
		if t.kind == tokEq || t.kind == tokNe || t.kind == tokIn {
			p.fail(t.pos, "device.managed is true or false: write device.managed or not device.managed")
		}
		return p.node(r.pos, &exprNode{op: exprManaged, ref: r.ref})
	case r.ref.isList():
		p.fail(r.pos, name+` is a list: test whether it contains a string with "…" in `+name)
	}
	switch t.kind {
	case tokEq, tokNe:
		p.next()
		v := p.tok
		if v.kind != tokString {
			msg := "unexpected " + v.describe() + ": expected a string after " + t.text
			if v.kind == tokRef {
				msg = "cannot compare two attributes: compare " + name + " with a string"
			}
			p.fail(v.pos, msg)
		}
		p.next()
		return p.node(r.pos, &exprNode{op: exprEq, neg: t.kind == tokNe, ref: r.ref, val: v.text})
	case tokIn, tokNot:
		neg := p.notIn("")
		vals := p.list()
		return p.node(r.pos, &exprNode{op: exprIn, neg: neg, ref: r.ref, vals: vals})
	}
	p.fail(r.pos, name+` is a string: compare it with ==, != or in, as in `+name+` == "…"`)
	return nil
}

// list parses `[ STRING {, STRING} [,] ]`.
func (p *exprParser) list() []string {
	open := p.tok
	if open.kind != tokLBrack {
		p.fail(open.pos, "unexpected "+open.describe()+`: expected a list after in, as in ["a", "b"]`)
	}
	p.next()
	var vals []string
	for {
		t := p.tok
		switch {
		case t.kind == tokRBrack && len(vals) == 0:
			p.fail(open.pos, "empty list")
		case t.kind == tokRBrack:
			p.next()
			return vals
		case t.kind != tokString:
			p.fail(t.pos, "unexpected "+t.describe()+": lists hold strings only")
		case len(vals) == maxExprList:
			p.fail(t.pos, fmt.Sprintf("list has more than %d items", maxExprList))
		}
		vals = append(vals, t.text)
		p.next()
		switch p.tok.kind {
		case tokComma:
			p.next()
		case tokRBrack:
		default:
			p.fail(p.tok.pos, "unexpected "+p.tok.describe()+fmt.Sprintf(`: expected , or ] to close the [ at column %d`, open.pos+1))
		}
	}
}

// next reads the next token into p.tok.
func (p *exprParser) next() {
	s := p.src
	for p.off < len(s) && (s[p.off] == ' ' || s[p.off] == '\t' || s[p.off] == '\n' || s[p.off] == '\r') {
		p.off++
	}
	start := p.off
	if start == len(s) {
		p.tok = exprToken{kind: tokEOF, pos: start}
		return
	}
	tok := func(k exprTokKind, n int) {
		p.off += n
		p.tok = exprToken{kind: k, pos: start, text: s[start:p.off]}
	}
	two := ""
	if start+1 < len(s) {
		two = s[start : start+2]
	}
	switch c := s[start]; {
	case c == '"':
		p.tok = exprToken{kind: tokString, pos: start, text: p.str()}
	case c == '(':
		tok(tokLParen, 1)
	case c == ')':
		tok(tokRParen, 1)
	case c == '[':
		tok(tokLBrack, 1)
	case c == ']':
		tok(tokRBrack, 1)
	case c == ',':
		tok(tokComma, 1)
	case two == "==":
		tok(tokEq, 2)
	case two == "!=":
		tok(tokNe, 2)
	case two == "&&":
		tok(tokAnd, 2)
	case two == "||":
		tok(tokOr, 2)
	case c == '!':
		tok(tokNot, 1)
	case c == '=':
		p.fail(start, "use == to compare")
	case c == '&':
		p.fail(start, "use && or and")
	case c == '|':
		p.fail(start, "use || or or")
	case c == '\'' || c == '`':
		p.fail(start, `strings are written in double quotes: "…"`)
	case 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || c == '_':
		p.word()
	default:
		r, _ := utf8.DecodeRuneInString(s[start:])
		if r == utf8.RuneError {
			p.fail(start, "invalid UTF-8")
		}
		p.fail(start, fmt.Sprintf("unexpected character %q", r))
	}
}

// word reads a keyword or an attribute reference.
func (p *exprParser) word() {
	s, start := p.src, p.off
	for p.off < len(s) {
		c := s[p.off]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '.') {
			break
		}
		p.off++
	}
	w := s[start:p.off]
	if k, ok := exprKeywords[w]; ok {
		p.tok = exprToken{kind: k, pos: start, text: w}
		return
	}
	if lw := strings.ToLower(w); exprKeywords[lw] != tokEOF {
		p.fail(start, fmt.Sprintf("keywords are lower-case: write %s, not %s", lw, w))
	}
	if !strings.Contains(w, ".") && w != "user" && w != "device" {
		p.fail(start, fmt.Sprintf("unknown word %s: operators are ==, !=, in, not in, and (&&), or (||), not (!)", strconv.Quote(exprClip(w, maxExplainVal))))
	}
	ref, msg := exprRefOf(w)
	if msg != "" {
		pos := start
		if ref.kind == exprRefUser && strings.HasPrefix(w, "user.") {
			pos += len("user.")
		}
		p.fail(pos, msg)
	}
	p.tok = exprToken{kind: tokRef, pos: start, text: w, ref: ref}
}

// exprCasbinRewrite is what Casbin's EscapeAssertion rewrites anywhere in
// a matcher, string literals included: "r.", "p.", "r2." after one of
// these characters becomes "r_", "p_", "r2_".
var exprCasbinRewrite = regexp.MustCompile(`[()\s|&,=!><+\-*/]((r|p)[0-9]*)\.`)

// govaluateTimeFormats are the layouts govaluate (casbin/govaluate 1.3.0,
// tryParseTime) tries on every string literal; a literal that parses as
// one becomes a time, compared as a number.
var govaluateTimeFormats = [...]string{
	time.ANSIC,
	time.UnixDate,
	time.RubyDate,
	time.Kitchen,
	time.RFC3339,
	time.RFC3339Nano,
	"2006-01-02",
	"2006-01-02 15:04",
	"2006-01-02 15:04:05",
	"2006-01-02 15:04:05-07:00",
	"2006-01-02T15Z0700",
	"2006-01-02T15:04Z0700",
	"2006-01-02T15:04:05Z0700",
	"2006-01-02T15:04:05.999999999Z0700",
}

func looksLikeGovaluateTime(s string) bool {
	for _, f := range govaluateTimeFormats {
		if _, err := time.ParseInLocation(f, s, time.UTC); err == nil {
			return true
		}
	}
	return false
}

// str reads a string literal at p.off and returns its contents.
func (p *exprParser) str() string {
	s, start := p.src, p.off
	i := start + 1
	for {
		if i == len(s) {
			p.fail(start, "unterminated string")
		}
		c := s[i]
		if c == '"' {
			break
		}
		if c < utf8.RuneSelf {
			switch {
			case c < 0x20 || c == 0x7f:
				p.fail(i, "strings must not contain control characters")
			case c == '\\' || c == '#' || c == '\'' || c == '`' || c == ';' || c == '[' || c == ']':
				p.fail(i, fmt.Sprintf(`strings must not contain %s: it is reserved because conditions are compiled into a Casbin model`, string(c)))
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			p.fail(i, "string is not valid UTF-8")
		}
		if unicode.IsControl(r) {
			p.fail(i, "strings must not contain control characters")
		}
		i += size
	}
	v := s[start+1 : i]
	p.off = i + 1
	if len(v) > maxExprString {
		p.fail(start, fmt.Sprintf("string is longer than %d bytes", maxExprString))
	}
	if m := exprCasbinRewrite.FindStringSubmatchIndex(v); m != nil {
		p.fail(start+1+m[2], fmt.Sprintf("strings must not contain %q after a space, parenthesis or operator: Casbin would rewrite it", v[m[2]:m[3]+1]))
	}
	if j := strings.Index(v, "eval("); j >= 0 {
		p.fail(start+1+j, `strings must not contain "eval(": Casbin would treat it as a function call`)
	}
	if looksLikeGovaluateTime(v) {
		p.fail(start, fmt.Sprintf("string %s looks like a date or time: Casbin's evaluator would turn it into a number, so it could never match", strconv.Quote(v)))
	}
	return v
}
