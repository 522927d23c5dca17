// Package config loads YAML files into plain Go structs strictly (unknown
// fields, duplicate keys, several documents and oversized files are errors)
// and keeps the parsed document, so that both decoding errors and the
// caller's own validation errors name the file, line and field:
//
//	ztna.yaml:12: apps[0].upstream: must be an http or https URL
//
// It knows nothing about what the files mean: the proxy, policy and other
// packages own their config structs, defaults and validation. It must never
// apply defaults or accept a file it could only partly understand.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// MaxFileSize is the largest file Load and Parse accept. Config and policy
// files are hand-written; anything bigger is a mistake or an attack on the
// parser.
const MaxFileSize = 4 << 20

// FieldError is a problem at one place in a file. Line is 0 when unknown,
// Field is "" for the document as a whole.
type FieldError struct {
	File  string
	Line  int
	Field string
	Msg   string
}

// Error returns "FILE:LINE: FIELD: message", leaving out the parts that are
// unknown.
func (e *FieldError) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		if e.File != "" {
			b.WriteByte(':')
		}
		b.WriteString(strconv.Itoa(e.Line))
	}
	if b.Len() > 0 {
		b.WriteString(": ")
	}
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Doc is a parsed file, kept to find the line of a field after decoding.
type Doc struct {
	name string
	root *yaml.Node // the document's content; nil only for the zero Doc
	data []byte     // the bytes parsed, for Data and Span; never modified
}

// File returns the name the Doc was loaded under.
func (d *Doc) File() string {
	if d == nil {
		return ""
	}
	return d.name
}

// Load reads the YAML file at path into out (a pointer to a struct with
// yaml tags), rejecting unknown fields and duplicate keys, and returns a Doc
// that can name the line of any field for validation errors. Errors about
// the content are *FieldError values (several are joined with errors.Join,
// one per line).
func Load(path string, out any) (*Doc, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return Parse(path, data, out)
}

// Parse is Load for bytes already in memory; name is used in errors.
func Parse(name string, data []byte, out any) (*Doc, error) {
	if v := reflect.ValueOf(out); v.Kind() != reflect.Pointer || v.IsNil() {
		return nil, fmt.Errorf("config.Parse %s: out must be a non-nil pointer, not %T", name, out)
	}
	if len(data) > MaxFileSize {
		return nil, &FieldError{File: name, Msg: fmt.Sprintf("file is larger than the %d MiB limit", MaxFileSize>>20)}
	}
	d := &Doc{name: name, data: bytes.Clone(data)}

	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	switch err := dec.Decode(&doc); {
	case errors.Is(err, io.EOF):
		return nil, &FieldError{File: name, Msg: "file has no YAML content"}
	case err != nil:
		return nil, d.syntaxError(err)
	}
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case errors.Is(err, io.EOF):
	case err != nil:
		return nil, d.syntaxError(err)
	default:
		return nil, &FieldError{File: name, Line: next.Line,
			Msg: "a second YAML document (---) is not allowed; keep everything in one document"}
	}
	if len(doc.Content) == 1 {
		d.root = doc.Content[0]
	}
	if err := d.checkDuplicateKeys(); err != nil {
		return nil, err
	}

	// Decoding again from the bytes, because only a Decoder (not
	// Node.Decode) can reject unknown fields.
	strict := yaml.NewDecoder(bytes.NewReader(data))
	strict.KnownFields(true)
	if err := strict.Decode(out); err != nil {
		return nil, d.decodeError(err, reflect.TypeOf(out).Elem())
	}
	return d, nil
}

// Errorf builds a *FieldError for the field at path (see Line).
func (d *Doc) Errorf(path, format string, args ...any) *FieldError {
	return &FieldError{File: d.File(), Line: d.Line(path), Field: path, Msg: fmt.Sprintf(format, args...)}
}

// Line returns the 1-based line of the field at a dotted path like
// "apps[2].rules[0].methods": for a mapping entry the line of its key (where
// the field is named, which is also its value's line unless the value is a
// block on the following lines), for a list item the line of the item. If
// the path does not exist it returns the line of its nearest existing
// ancestor (so a missing required field points at the object that lacks
// it), and 0 if nothing matches or the Doc is empty. "" is the document.
func (d *Doc) Line(path string) int {
	if d == nil || d.root == nil {
		return 0
	}
	segs, ok := splitPath(path)
	if !ok {
		return 0
	}
	n, line := d.root, d.root.Line
	for _, s := range segs {
		var next *yaml.Node
		var at int
		if s.isIndex {
			if n = resolve(n); n.Kind == yaml.SequenceNode && s.index < len(n.Content) {
				next = n.Content[s.index]
				at = next.Line
			}
		} else if k, v := lookup(n, s.key); v != nil {
			next, at = v, k.Line
		}
		if next == nil {
			break
		}
		n, line = next, at
	}
	return line
}

type segment struct {
	key     string
	index   int
	isIndex bool
}

// splitPath parses "a.b[2].c" into segments.
func splitPath(path string) ([]segment, bool) {
	var segs []segment
	for path != "" {
		switch path[0] {
		case '.':
			path = path[1:]
		case '[':
			end := strings.IndexByte(path, ']')
			if end < 0 {
				return nil, false
			}
			i, err := strconv.Atoi(path[1:end])
			if err != nil || i < 0 {
				return nil, false
			}
			segs = append(segs, segment{index: i, isIndex: true})
			path = path[end+1:]
		default:
			end := strings.IndexAny(path, ".[")
			if end < 0 {
				end = len(path)
			}
			segs = append(segs, segment{key: path[:end]})
			path = path[end:]
		}
	}
	return segs, true
}

// resolve follows an alias (*anchor) to the node it names.
func resolve(n *yaml.Node) *yaml.Node {
	for i := 0; n.Kind == yaml.AliasNode && n.Alias != nil && i < 100; i++ {
		n = n.Alias
	}
	return n
}

// lookup finds key in mapping n, also in maps merged in with "<<", and
// returns the key and value nodes.
func lookup(n *yaml.Node, key string) (k, v *yaml.Node) {
	return lookupDepth(n, key, 0)
}

func lookupDepth(n *yaml.Node, key string, depth int) (k, v *yaml.Node) {
	n = resolve(n)
	if n.Kind != yaml.MappingNode || depth > 10 {
		return nil, nil
	}
	var merges []*yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		kn, vn := n.Content[i], n.Content[i+1]
		if kn.Kind != yaml.ScalarNode {
			continue
		}
		if kn.Value == key && kn.Tag != "!!merge" {
			return kn, vn
		}
		if kn.Tag == "!!merge" {
			merges = append(merges, vn)
		}
	}
	for _, m := range merges {
		m = resolve(m)
		if m.Kind == yaml.SequenceNode {
			for _, item := range m.Content {
				if k, v := lookupDepth(item, key, depth+1); v != nil {
					return k, v
				}
			}
		} else if k, v := lookupDepth(m, key, depth+1); v != nil {
			return k, v
		}
	}
	return nil, nil
}

// visit calls fn for every node under the root with its path, its key node
// (nil for list items and the root) and the node itself, in document order.
// It does not follow aliases, so it visits each written node exactly once.
func (d *Doc) visit(fn func(path string, key, n *yaml.Node) bool) {
	var walk func(path string, key, n *yaml.Node) bool
	walk = func(path string, key, n *yaml.Node) bool {
		if !fn(path, key, n) {
			return false
		}
		switch n.Kind {
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				kn, vn := n.Content[i], n.Content[i+1]
				if !walk(joinKey(path, kn.Value), kn, vn) {
					return false
				}
			}
		case yaml.SequenceNode:
			for i, item := range n.Content {
				if !walk(path+"["+strconv.Itoa(i)+"]", nil, item) {
					return false
				}
			}
		}
		return true
	}
	if d.root != nil {
		walk("", nil, d.root)
	}
}

func joinKey(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// checkDuplicateKeys reports repeated keys in any mapping. yaml reports
// them too, but only in mappings it decodes (not under ignored or "any"
// fields) and without the path.
func (d *Doc) checkDuplicateKeys() error {
	var errs []error
	dups := 0
	d.visit(func(path string, _, n *yaml.Node) bool {
		if n.Kind != yaml.MappingNode {
			return true
		}
		seen := map[string]int{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			kn := n.Content[i]
			if kn.Kind != yaml.ScalarNode {
				continue
			}
			if first, dup := seen[kn.Value]; dup {
				dups++
				if dups > maxErrors {
					continue
				}
				errs = append(errs, &FieldError{File: d.name, Line: kn.Line, Field: joinKey(path, kn.Value),
					Msg: fmt.Sprintf("duplicate key (first set on line %d)", first)})
				continue
			}
			seen[kn.Value] = kn.Line
		}
		return true
	})
	if dups > maxErrors {
		errs = append(errs, d.more(dups-maxErrors))
	}
	return errors.Join(errs...)
}

// syntaxError turns a yaml parse error ("yaml: line 3: did not find
// expected key") into a *FieldError.
func (d *Doc) syntaxError(err error) error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	line := 0
	if m := lineRE.FindStringSubmatch(msg); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = m[2]
	}
	return &FieldError{File: d.name, Line: line, Msg: "invalid YAML: " + msg}
}

var (
	lineRE         = regexp.MustCompile(`^line (\d+): (.*)$`)
	unknownFieldRE = regexp.MustCompile(`^field (.+) not found in type (.+)$`)
	mismatchRE     = regexp.MustCompile("^cannot unmarshal (!!\\w+|!\\S*)(?: `(.*)`)? into (.+)$")
	dupKeyRE       = regexp.MustCompile(`^mapping key "(.*)" already defined at line (\d+)$`)
	fieldSetRE     = regexp.MustCompile(`^field (.+) already set in type (.+)$`)
)

// decodeError turns what strict decoding into a value of type t returned
// into *FieldErrors naming the field.
func (d *Doc) decodeError(err error, t reflect.Type) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		// A TextUnmarshaler or yaml.Unmarshaler failed; yaml gives no
		// position for those.
		return &FieldError{File: d.name, Msg: strings.TrimPrefix(err.Error(), "yaml: ")}
	}
	var errs []error
	for i, e := range te.Errors {
		if i == maxErrors {
			errs = append(errs, d.more(len(te.Errors)-i))
			break
		}
		errs = append(errs, d.typeError(e, t))
	}
	return errors.Join(errs...)
}

// maxErrors bounds the errors reported for one file: each costs a walk of
// the document, and nobody reads the hundredth.
const maxErrors = 10

func (d *Doc) more(n int) *FieldError {
	return &FieldError{File: d.name, Msg: fmt.Sprintf("and %d more errors", n)}
}

func (d *Doc) typeError(e string, t reflect.Type) *FieldError {
	fe := &FieldError{File: d.name, Msg: e}
	m := lineRE.FindStringSubmatch(e)
	if m == nil {
		return fe
	}
	fe.Line, _ = strconv.Atoi(m[1])
	fe.Msg = m[2]

	if m := unknownFieldRE.FindStringSubmatch(fe.Msg); m != nil {
		name := m[1]
		path, parent := d.keyAt(fe.Line, name)
		fe.Field = path
		fe.Msg = unknownFieldMsg(name, typeAt(t, parent))
		return fe
	}
	if m := dupKeyRE.FindStringSubmatch(fe.Msg); m != nil {
		fe.Field, _ = d.keyAt(fe.Line, m[1])
		fe.Msg = "duplicate key (first set on line " + m[2] + ")"
		return fe
	}
	if m := fieldSetRE.FindStringSubmatch(fe.Msg); m != nil {
		fe.Field, _ = d.keyAt(fe.Line, m[1])
		fe.Msg = "set more than once (directly and through a merge or an inlined struct)"
		return fe
	}
	if m := mismatchRE.FindStringSubmatch(fe.Msg); m != nil {
		tag, shown, goType := m[1], m[2], m[3]
		path, n := d.valueAt(fe.Line, tag, shown, goType, t)
		fe.Field = path
		want := goType
		if ft := typeAt(t, path); ft != nil && ft.String() == goType {
			want = describeType(ft)
		}
		got := describeTag(tag)
		if n != nil && n.Kind == yaml.ScalarNode {
			got += " " + strconv.Quote(clip(n.Value))
		} else if shown != "" {
			got += " " + strconv.Quote(shown)
		}
		fe.Msg = "must be " + want + ", not " + got
		return fe
	}
	return fe
}

// keyAt finds the mapping key named name on line and returns its path and
// its parent's path.
func (d *Doc) keyAt(line int, name string) (path, parent string) {
	d.visit(func(p string, key, _ *yaml.Node) bool {
		if key != nil && key.Line == line && key.Value == name {
			path = p
			parent = strings.TrimSuffix(strings.TrimSuffix(p, name), ".")
			return false
		}
		return true
	})
	return path, parent
}

// valueAt finds the value on line that yaml complained about: the first,
// in document order, whose tag, text (as yaml clipped it) and Go type
// match the message; failing that the first with matching tag and text,
// then simply the first value on the line.
func (d *Doc) valueAt(line int, tag, shown, goType string, t reflect.Type) (string, *yaml.Node) {
	type candidate struct {
		path string
		n    *yaml.Node
	}
	var first, textMatch, typeMatch *candidate
	d.visit(func(p string, _, n *yaml.Node) bool {
		if n.Line != line {
			return true
		}
		c := &candidate{p, n}
		if first == nil {
			first = c
		}
		if n.ShortTag() != tag && n.Tag != tag {
			return true
		}
		if n.Kind == yaml.ScalarNode && clipLikeYAML(n.Value) != shown {
			return true
		}
		if textMatch == nil {
			textMatch = c
		}
		if ft := typeAt(t, p); ft != nil && ft.String() == goType {
			typeMatch = c
			return false
		}
		return true
	})
	for _, c := range []*candidate{typeMatch, textMatch, first} {
		if c != nil {
			return c.path, c.n
		}
	}
	return "", nil
}

// clipLikeYAML shortens a scalar the way yaml's type errors do.
func clipLikeYAML(s string) string {
	if len(s) > 10 {
		return s[:7] + "..."
	}
	return s
}

func clip(s string) string {
	if len(s) > 40 {
		return s[:37] + "..."
	}
	return s
}

func describeTag(tag string) string {
	switch tag {
	case "!!str":
		return "the string"
	case "!!int":
		return "the integer"
	case "!!float":
		return "the number"
	case "!!bool":
		return "the boolean"
	case "!!null":
		return "null"
	case "!!seq":
		return "a list"
	case "!!map":
		return "a mapping"
	case "!!timestamp":
		return "the timestamp"
	case "!!binary":
		return "binary data"
	}
	return "a value tagged " + tag
}

func describeType(t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.PkgPath() == "time" && t.Name() == "Duration" {
		return `a duration with a unit, like "30s" or "1h30m"`
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return "an integer"
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return "a non-negative integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Slice, reflect.Array:
		return "a list"
	case reflect.Map, reflect.Struct:
		return "a mapping"
	}
	return t.String()
}

// unknownFieldMsg says which fields the struct does have, or which one the
// writer probably meant.
func unknownFieldMsg(name string, t reflect.Type) string {
	msg := "unknown field"
	fields := yamlFields(t)
	if len(fields) == 0 {
		return msg
	}
	best, bestDist := "", 3 // suggest only close matches
	for _, f := range fields {
		if dist := EditDistance(strings.ToLower(name), strings.ToLower(f)); dist < bestDist {
			best, bestDist = f, dist
		}
	}
	if best != "" {
		return fmt.Sprintf("unknown field (did you mean %q?)", best)
	}
	return msg + "; known fields: " + strings.Join(fields, ", ")
}

// typeAt returns the Go type that the value at path decodes into, or nil.
func typeAt(t reflect.Type, path string) reflect.Type {
	segs, ok := splitPath(path)
	if !ok {
		return nil
	}
	for _, s := range segs {
		for t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		switch {
		case s.isIndex && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array):
			t = t.Elem()
		case !s.isIndex && t.Kind() == reflect.Map:
			t = t.Elem()
		case !s.isIndex && t.Kind() == reflect.Struct:
			f, ok := fieldByYAMLName(t, s.key)
			if !ok {
				return nil
			}
			t = f.Type
		default:
			return nil
		}
	}
	return t
}

// yamlFields lists the keys a struct type accepts, in declaration order.
func yamlFields(t reflect.Type) []string {
	if t == nil {
		return nil
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct {
		return nil
	}
	var names []string
	eachYAMLField(t, func(name string, _ reflect.StructField) bool {
		names = append(names, name)
		return true
	})
	return names
}

func fieldByYAMLName(t reflect.Type, name string) (found reflect.StructField, ok bool) {
	eachYAMLField(t, func(n string, f reflect.StructField) bool {
		if n == name {
			found, ok = f, true
			return false
		}
		return true
	})
	return found, ok
}

// eachYAMLField calls fn for every field of struct t as yaml v3 names it:
// the tag's name, else the lower-cased Go name; ",inline" structs are
// flattened; "-" and unexported (non-embedded) fields are skipped.
func eachYAMLField(t reflect.Type, fn func(name string, f reflect.StructField) bool) bool {
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() && !f.Anonymous {
			continue
		}
		tag := f.Tag.Get("yaml")
		if tag == "" && !strings.Contains(string(f.Tag), ":") {
			tag = string(f.Tag) // yaml's old `name,opts` tag form
		}
		if tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		if strings.Contains(","+opts+",", ",inline,") {
			ft := f.Type
			for ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct && !eachYAMLField(ft, fn) {
				return false
			}
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		if !fn(name, f) {
			return false
		}
	}
	return true
}

// EditDistance is the Levenshtein distance, for "did you mean"
// suggestions. Strings longer than 64 bytes are never suggested: they get
// 64, which keeps a suggestion over many long names cheap.
func EditDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 64
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
