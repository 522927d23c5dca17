package groups

// Exporting a change as a diff. When the policy comes from files (GitOps:
// the config file's groups and apps[i].rules, and the files of
// policy.dir), the console cannot save an edit; it offers the edit as a
// unified diff to paste into a pull request instead. The diff replaces
// exactly the lines of the changed item, so comments and formatting
// anywhere else in the files survive review and `git apply`.

import (
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	udiff "github.com/aymanbagabas/go-udiff"
	"go.yaml.in/yaml/v3"

	"github.com/ztna-dev/ztna/internal/config"
)

// Change is one proposed edit of a policy: a group replaced, added or
// removed, or an app's rules replaced. Exactly one of Group, RemoveGroup
// and App is set.
type Change struct {
	// Group is the new group; nil with RemoveGroup or App.
	Group *Group
	// OldName is the group's current name; "" makes Group a new group.
	// A Group.Name different from OldName renames the group.
	OldName string
	// RemoveGroup removes the group with this name.
	RemoveGroup string
	// App, with Rules, replaces every rule of this app.
	App   string
	Rules []Rule
}

// ExportDiff returns a unified diff that makes the source's files say
// what c says: one `--- a/PATH` / `+++ b/PATH` section per file changed,
// files sorted, PATH relative to base when the file is under it and as
// recorded otherwise. It applies with `git apply` or `patch -p1` from base.
// The result is "" when the files already say what c says.
//
// A changed group's lines are replaced and a removed group's deleted; a
// new group is appended to the groups list of the file that holds the most
// groups (or given a `groups:` list at the end of the first file). An
// app's new rules replace the rules of its first entry, and its entries in
// other files are emptied (`rules: []`); an app with no entry gets one at
// the end of the apps list of a policy file. Items built in Go, not read
// from a file, cannot be exported.
//
// The new text of a changed item keeps the formatting of what it replaces
// where the value is still there: flow-style [...] lists, comments on
// fields and entries, key order, quoting. A new item is written in block
// style, two spaces per level, with every string that YAML would read as
// something else quoted.
//
// Before returning, ExportDiff parses each edited file and checks that the
// changed list now holds exactly what c says and that nothing else in the
// file changed; if not (an anchor another item uses, say), it returns an
// error rather than a diff that would do something else. It does not check
// that the changed policy compiles: Compile it with the edge's Options
// first.
func (s *Source) ExportDiff(c Change, base string) (string, error) {
	ex := &exporter{src: s, files: map[*config.Doc]*exportFile{}}
	var err error
	switch {
	case c.App != "":
		if c.Group != nil || c.OldName != "" || c.RemoveGroup != "" {
			return "", errors.New("export: a change edits either a group or an app's rules, not both")
		}
		if msg := checkName(c.App); msg != "" {
			return "", fmt.Errorf("export: app name: %s", msg)
		}
		err = ex.setAppRules(c.App, c.Rules)
	case c.RemoveGroup != "":
		if c.Group != nil || c.OldName != "" || c.Rules != nil {
			return "", errors.New("export: a change that removes a group changes nothing else")
		}
		err = ex.removeGroup(c.RemoveGroup)
	case c.Group != nil:
		if c.Rules != nil {
			return "", errors.New("export: Rules need App: a change edits either a group or an app's rules")
		}
		if msg := checkGroupName(c.Group.Name); msg != "" {
			return "", fmt.Errorf("export: group name: %s", msg)
		}
		if c.OldName == "" {
			err = ex.addGroup(*c.Group)
		} else {
			err = ex.replaceGroup(c.OldName, *c.Group)
		}
	default:
		return "", errors.New("export: the change is empty: set Group, RemoveGroup or App")
	}
	if err != nil {
		return "", fmt.Errorf("export: %w", err)
	}
	return ex.diff(base)
}

// exporter collects the line edits of one Change, per file, and what each
// edited list must say afterwards.
type exporter struct {
	src   *Source
	files map[*config.Doc]*exportFile
}

// exportFile is one file being edited.
type exportFile struct {
	doc   *config.Doc
	data  string
	lines []string // without their "\n"
	edits []exportEdit
	lists map[string]*exportList // by YAML path of the list: "groups", "apps"
}

// exportEdit replaces lines first..last (1-based, inclusive) with text
// (whole lines); last == first-1 inserts text before line first.
type exportEdit struct {
	first, last int
	text        string
}

// exportList is what one list of a file must say after the edits, in the
// generic form yaml decodes into `any`.
type exportList struct {
	set   map[int]any  // item i becomes
	rules map[int]any  // item i's "rules" becomes
	del   map[int]bool // item i is gone
	add   []any        // appended items
}

func (ex *exporter) file(doc *config.Doc) (*exportFile, error) {
	if f := ex.files[doc]; f != nil {
		return f, nil
	}
	data := string(doc.Data())
	if strings.Contains(data, "\r") {
		return nil, fmt.Errorf("%s: has CR (Windows) line endings; only LF files can be exported", doc.File())
	}
	f := &exportFile{doc: doc, data: data, lists: map[string]*exportList{}}
	if data != "" {
		f.lines = strings.Split(strings.TrimSuffix(data, "\n"), "\n")
	}
	ex.files[doc] = f
	return f, nil
}

func (f *exportFile) list(path string) *exportList {
	l := f.lists[path]
	if l == nil {
		l = &exportList{set: map[int]any{}, rules: map[int]any{}, del: map[int]bool{}}
		f.lists[path] = l
	}
	return l
}

// replace puts text (YAML lines written at column 0) in place of lines
// first..last, at column indent, keeping what precedes that column on the
// first line (indentation, or the "- " of an enclosing list item).
func (f *exportFile) replace(first, last, indent int, text string) {
	prefix := f.lines[first-1][:indent]
	f.edits = append(f.edits, exportEdit{first, last, exportPlace(text, prefix, indent)})
}

// insert puts text at column indent before line at (len(lines)+1: at the
// end of the file).
func (f *exportFile) insert(at, indent int, text string) {
	f.edits = append(f.edits, exportEdit{at, at - 1, exportPlace(text, strings.Repeat(" ", indent), indent)})
}

// exportPlace moves YAML written at column 0 to column indent: prefix
// before the first line, indent spaces before every other non-empty line.
// Empty lines stay empty (inside a block scalar they are content either
// way, and trailing spaces would only be noise in the diff).
func exportPlace(text, prefix string, indent int) string {
	pad := strings.Repeat(" ", indent)
	var b strings.Builder
	for i, l := range strings.SplitAfter(text, "\n") {
		switch {
		case l == "":
			continue
		case i == 0:
			b.WriteString(prefix)
		case l != "\n":
			b.WriteString(pad)
		}
		b.WriteString(l)
	}
	return b.String()
}

// groupOrigin and appOrigin return where item i was written; the zero
// origin when it was appended in Go.
func (ex *exporter) groupOrigin(i int) origin {
	if i < len(ex.src.groupAt) {
		return ex.src.groupAt[i]
	}
	return origin{}
}

func (ex *exporter) appOrigin(i int) origin {
	if i < len(ex.src.appAt) {
		return ex.src.appAt[i]
	}
	return origin{}
}

// exportWhere names an origin for messages: FILE:LINE.
func exportWhere(o origin) string {
	return fmt.Sprintf("%s:%d", o.doc.File(), o.doc.Line(o.path))
}

// findGroup returns the index of the group named name, or -1.
func (ex *exporter) findGroup(name string) (int, error) {
	at := -1
	for i, g := range ex.src.Groups {
		if g.Name != name {
			continue
		}
		if at >= 0 {
			return -1, fmt.Errorf("group %q is defined more than once (%s and %s)", name, ex.src.whereGroup(at), ex.src.whereGroup(i))
		}
		at = i
	}
	return at, nil
}

func (ex *exporter) replaceGroup(oldName string, g Group) error {
	i, err := ex.findGroup(oldName)
	if err != nil {
		return err
	}
	if i < 0 {
		return fmt.Errorf("no group %q to change", oldName)
	}
	if g.Name != oldName {
		j, err := ex.findGroup(g.Name)
		if err != nil {
			return err
		}
		if j >= 0 {
			return fmt.Errorf("cannot rename group %q to %q: that group already exists (%s)", oldName, g.Name, ex.src.whereGroup(j))
		}
	}
	o := ex.groupOrigin(i)
	if o.doc == nil {
		return fmt.Errorf("group %q was not written in a file", oldName)
	}
	want, err := exportGeneric(g)
	if err != nil {
		return err
	}
	return ex.replaceItem(o, []Group{g}, want)
}

// replaceItem replaces the list item at o with items (a one-item slice),
// unless it already says want.
func (ex *exporter) replaceItem(o origin, items, want any) error {
	list, idx, ok := exportListPath(o.path)
	if !ok {
		return fmt.Errorf("%s: %s is not a list item", exportWhere(o), o.path)
	}
	var old any
	if found, err := o.doc.Decode(o.path, &old); err != nil {
		return fmt.Errorf("%s: %s: %w", exportWhere(o), o.path, err)
	} else if !found {
		return fmt.Errorf("%s: no %s in the file", exportWhere(o), o.path)
	}
	if exportEqual(old, want) {
		return nil
	}
	first, last, indent, ok := o.doc.Span(o.path)
	if !ok {
		return fmt.Errorf("%s: %s cannot be edited in place (it is inside a flow-style [...] list or reached through an alias); write %s as a block list", exportWhere(o), o.path, list)
	}
	var oldNode yaml.Node
	if _, err := o.doc.Decode(o.path, &oldNode); err != nil {
		return fmt.Errorf("%s: %w", exportWhere(o), err)
	}
	text, err := exportEncode(items, &yaml.Node{Kind: yaml.SequenceNode, Content: []*yaml.Node{&oldNode}})
	if err != nil {
		return err
	}
	f, err := ex.file(o.doc)
	if err != nil {
		return err
	}
	f.replace(first, last, indent, text)
	f.list(list).set[idx] = want
	return nil
}

func (ex *exporter) removeGroup(name string) error {
	i, err := ex.findGroup(name)
	if err != nil {
		return err
	}
	if i < 0 {
		return fmt.Errorf("no group %q to remove", name)
	}
	o := ex.groupOrigin(i)
	if o.doc == nil {
		return fmt.Errorf("group %q was not written in a file", name)
	}
	list, idx, ok := exportListPath(o.path)
	if !ok {
		return fmt.Errorf("%s: %s is not a list item", exportWhere(o), o.path)
	}
	first, last, indent, ok := o.doc.Span(o.path)
	if !ok {
		return fmt.Errorf("%s: %s cannot be removed in place (it is inside a flow-style [...] list or reached through an alias); write %s as a block list", exportWhere(o), o.path, list)
	}
	f, err := ex.file(o.doc)
	if err != nil {
		return err
	}
	// Its head comment goes with it: the comment lines right above its
	// "-" and in its column, which Span leaves out because they introduce
	// the item rather than end the one before.
	for first > 1 && exportIsHeadComment(f.lines[first-2], indent) {
		first--
	}
	// Between blank lines, take one with it, so that removing an item
	// from a list spaced out with blank lines leaves it spaced the same.
	if first > 1 && last < len(f.lines) && strings.TrimSpace(f.lines[first-2]) == "" && strings.TrimSpace(f.lines[last]) == "" {
		last++
	}
	f.edits = append(f.edits, exportEdit{first, last, ""})
	f.list(list).del[idx] = true
	return nil
}

// exportIsHeadComment reports whether line is a comment written at
// column indent.
func exportIsHeadComment(line string, indent int) bool {
	t := strings.TrimLeft(line, " ")
	return strings.HasPrefix(t, "#") && len(line)-len(t) == indent
}

func (ex *exporter) addGroup(g Group) error {
	j, err := ex.findGroup(g.Name)
	if err != nil {
		return err
	}
	if j >= 0 {
		return fmt.Errorf("a group named %q already exists (%s); set OldName to change it", g.Name, ex.src.whereGroup(j))
	}
	want, err := exportGeneric(g)
	if err != nil {
		return err
	}
	// The file that holds the most groups; the first of them on a tie.
	best, bestList := busiestFile(len(ex.src.Groups), ex.groupOrigin, func(o origin) bool { return true })
	if best == nil {
		// No file has groups: start a list in the first file there is.
		for i := range ex.src.Apps {
			if o := ex.appOrigin(i); o.doc != nil {
				best, bestList = o.doc, "groups"
				break
			}
		}
	}
	if best == nil {
		return fmt.Errorf("group %q: the policy was not read from any file, so there is no file to add it to", g.Name)
	}
	return ex.appendItem(best, bestList, []Group{g}, want)
}

// appendItem appends items (a one-item slice) to the list at key of doc:
// after its last item; in place of an empty `key: []` or `key:`; or as a
// new key at the end of the file.
func (ex *exporter) appendItem(doc *config.Doc, key string, items, want any) error {
	f, err := ex.file(doc)
	if err != nil {
		return err
	}
	var list []any
	found, err := doc.Decode(key, &list)
	if err != nil {
		return fmt.Errorf("%s:%d: %s is not a list", doc.File(), doc.Line(key), key)
	}
	switch {
	case len(list) > 0:
		_, last, indent, ok := doc.Span(fmt.Sprintf("%s[%d]", key, len(list)-1))
		if !ok {
			return fmt.Errorf("%s:%d: cannot add to %s in place (it is a flow-style [...] list); write it as a block list", doc.File(), doc.Line(key), key)
		}
		text, err := exportYAML(items)
		if err != nil {
			return err
		}
		f.insert(last+1, indent, text)
	case found:
		first, last, indent, ok := doc.Span(key)
		if !ok {
			return fmt.Errorf("%s:%d: cannot rewrite %s in place", doc.File(), doc.Line(key), key)
		}
		text, err := exportYAML(map[string]any{key: items})
		if err != nil {
			return err
		}
		f.replace(first, last, indent, text)
	default:
		var root yaml.Node
		_, _, indent, ok := doc.Span("")
		if _, err := doc.Decode("", &root); err != nil || !ok || root.Kind != yaml.MappingNode || strings.ContainsAny(key, ".[") {
			return fmt.Errorf("%s: cannot add a %s list: the file is not a block mapping", doc.File(), key)
		}
		text, err := exportYAML(map[string]any{key: items})
		if err != nil {
			return err
		}
		f.insert(len(f.lines)+1, indent, text)
	}
	l := f.list(key)
	l.add = append(l.add, want)
	return nil
}

// exportAppItem is an apps entry of a policy file as written by the
// export: rules always present, "rules: []" when there are none.
type exportAppItem struct {
	App   string `yaml:"app"`
	Rules []Rule `yaml:"rules"`
}

func (ex *exporter) setAppRules(app string, rules []Rule) error {
	var entries []int
	for i, ar := range ex.src.Apps {
		if ar.App == app {
			entries = append(entries, i)
		}
	}
	if len(entries) == 0 {
		return ex.addApp(app, rules)
	}
	for _, i := range entries {
		if ex.appOrigin(i).doc == nil {
			return fmt.Errorf("the rules of app %q were not written in a file (apps[%d] was added in Go)", app, i)
		}
	}
	// All the new rules go to the first entry; the others are emptied
	// rather than removed, because in the config file the entry also
	// defines the app.
	for k, i := range entries {
		r := rules
		if k > 0 {
			r = nil
		}
		if err := ex.setRules(ex.appOrigin(i), app, r); err != nil {
			return err
		}
	}
	return nil
}

// setRules replaces the rules of the apps entry at o.
func (ex *exporter) setRules(o origin, app string, rules []Rule) error {
	list, idx, ok := exportListPath(o.path)
	if !ok {
		return fmt.Errorf("%s: %s is not a list item", exportWhere(o), o.path)
	}
	var item map[string]any
	var itemNode yaml.Node
	if found, err := o.doc.Decode(o.path, &item); err != nil || !found || item == nil {
		return fmt.Errorf("%s: %s is not a mapping", exportWhere(o), o.path)
	}
	if _, err := o.doc.Decode(o.path, &itemNode); err != nil {
		return fmt.Errorf("%s: %w", exportWhere(o), err)
	}
	key := map[string]any{"rules": exportRules(rules)}
	generic, err := exportGeneric(key)
	if err != nil {
		return err
	}
	m, _ := generic.(map[string]any)
	want := m["rules"]
	old, has := item["rules"]
	if exportEqual(old, want) {
		return nil
	}
	oldKey := &yaml.Node{Kind: yaml.MappingNode}
	for i := 0; i+1 < len(itemNode.Content); i += 2 {
		if itemNode.Content[i].Value == "rules" {
			oldKey.Content = itemNode.Content[i : i+2]
		}
	}
	text, err := exportEncode(key, oldKey)
	if err != nil {
		return err
	}
	f, err := ex.file(o.doc)
	if err != nil {
		return err
	}
	if first, last, indent, ok := o.doc.Span(o.path + ".rules"); ok {
		f.replace(first, last, indent, text)
	} else if first, last, indent, ok := o.doc.Span(o.path); ok && o.appField == "app" {
		// A policy file's entry is only {app, rules}: write it whole.
		whole, err := exportEncode([]exportAppItem{{App: app, Rules: exportRules(rules)}},
			&yaml.Node{Kind: yaml.SequenceNode, Content: []*yaml.Node{&itemNode}})
		if err != nil {
			return err
		}
		f.replace(first, last, indent, whole)
	} else if _, last, _, ok := o.doc.Span(o.path); ok && !has {
		// An entry of the config file without rules: add the key after
		// its last line, in the column of its other keys.
		_, _, indent, ok := o.doc.Span(o.path + "." + o.appField)
		if !ok {
			return fmt.Errorf("%s: cannot add rules to %s in place; write it as a block mapping", exportWhere(o), o.path)
		}
		f.insert(last+1, indent, text)
	} else {
		return fmt.Errorf("%s: the rules of app %q cannot be edited in place (they are inside a flow-style {...} or [...]); write %s as a block mapping", exportWhere(o), app, o.path)
	}
	f.list(list).rules[idx] = want
	return nil
}

// exportRules makes "no rules" encode as [], not null.
func exportRules(rules []Rule) []Rule {
	if rules == nil {
		return []Rule{}
	}
	return rules
}

// addApp gives an app with no entry one, in the policy file that holds
// the most apps entries (the first on a tie), else in the first policy
// file. The config file is never the place: its apps entries define apps,
// and an app that is not defined there has no host to serve.
func (ex *exporter) addApp(app string, rules []Rule) error {
	isConfig := map[*config.Doc]bool{}
	for i := range ex.src.Apps {
		if o := ex.appOrigin(i); o.doc != nil && o.appField != "app" {
			isConfig[o.doc] = true
		}
	}
	best, bestList := busiestFile(len(ex.src.Apps), ex.appOrigin, func(o origin) bool { return o.appField == "app" })
	if best == nil {
		for i := range ex.src.Groups {
			if o := ex.groupOrigin(i); o.doc != nil && !isConfig[o.doc] {
				best, bestList = o.doc, "apps"
				break
			}
		}
	}
	if best == nil {
		return fmt.Errorf("app %q has no rules in any file, and there is no policy file to add them to", app)
	}
	item := exportAppItem{App: app, Rules: exportRules(rules)}
	want, err := exportGeneric(item)
	if err != nil {
		return err
	}
	return ex.appendItem(best, bestList, []exportAppItem{item}, want)
}

// busiestFile is the file that holds the most of n items (those with an
// origin that use accepts), the first of them on a tie, and the path of
// the list they are in; nil if none has a file.
func busiestFile(n int, originOf func(int) origin, use func(origin) bool) (*config.Doc, string) {
	var best *config.Doc
	bestList, count := "", map[*config.Doc]int{}
	for i := range n {
		o := originOf(i)
		if o.doc == nil || !use(o) {
			continue
		}
		count[o.doc]++
		if best == nil || count[o.doc] > count[best] {
			if list, _, ok := exportListPath(o.path); ok {
				best, bestList = o.doc, list
			}
		}
	}
	return best, bestList
}

// exportListPath splits "groups[2]" into "groups" and 2.
func exportListPath(path string) (list string, index int, ok bool) {
	open := strings.LastIndexByte(path, '[')
	if open <= 0 || !strings.HasSuffix(path, "]") {
		return "", 0, false
	}
	i, err := strconv.Atoi(path[open+1 : len(path)-1])
	if err != nil || i < 0 {
		return "", 0, false
	}
	return path[:open], i, true
}

// exportYAML encodes v as the policy files are written: block style, two
// spaces per level, every string quoted where YAML would read it as
// something else.
func exportYAML(v any) (string, error) {
	var b strings.Builder
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(v); err != nil {
		return "", fmt.Errorf("encode: %w", err)
	}
	if err := enc.Close(); err != nil {
		return "", fmt.Errorf("encode: %w", err)
	}
	return b.String(), nil
}

// exportEncode encodes v like old, the YAML it replaces, so that the diff
// shows what changed rather than a reformatting: v and old have the same
// shape (a list of the one item, or a mapping of the one key), and where
// the new value still has a field, list entry or string that old had,
// it keeps old's flow style, comments, key order and quoting. Should that
// not read back as v, it falls back to encoding v plainly.
func exportEncode(v any, old *yaml.Node) (string, error) {
	plain, err := exportYAML(v)
	if err != nil || old == nil {
		return plain, err
	}
	var n yaml.Node
	if err := n.Encode(v); err != nil {
		return plain, nil
	}
	exportRestyle(&n, old, 0)
	styled, err := exportYAML(&n)
	if err != nil {
		return plain, nil
	}
	var a, b any
	if yaml.Unmarshal([]byte(styled), &a) != nil || yaml.Unmarshal([]byte(plain), &b) != nil || !exportEqual(a, b) {
		return plain, nil
	}
	return styled, nil
}

// exportRestyle gives n the style of old (see exportEncode). level 0 is
// the one-item list or one-key mapping around what is replaced; its item
// is the one replaced even if renamed. Level 1 is that item (or key): yaml
// attaches the comment lines above it to it, but they are outside the
// lines replaced and stay in the file, so they are not copied. Below, a
// list entry is matched by value (strings) or by name (rules, groups).
// Foot comments are never copied: yaml also attaches to an item's last
// field the comments that follow the item, which stay in the file too.
func exportRestyle(n, old *yaml.Node, level int) {
	if old == nil || n.Kind != old.Kind || level > 64 {
		return
	}
	n.LineComment = old.LineComment
	if level > 1 {
		n.HeadComment = old.HeadComment
	}
	switch n.Kind {
	case yaml.ScalarNode:
		if n.Value == old.Value && n.ShortTag() == old.ShortTag() {
			n.Style = old.Style
		}
	case yaml.SequenceNode:
		n.Style = old.Style & yaml.FlowStyle
		used := make([]bool, len(old.Content))
		for i, c := range n.Content {
			j := -1
			switch {
			case level > 0:
				j = exportMatch(c, old.Content, used)
			case i < len(old.Content):
				j = i
			}
			if j >= 0 {
				used[j] = true
				exportRestyle(c, old.Content[j], level+1)
			}
		}
	case yaml.MappingNode:
		n.Style = old.Style & yaml.FlowStyle
		// The keys keep old's order; a new key goes after the key it
		// follows in n (field order), or first.
		type pair struct {
			k, v *yaml.Node
			at   int
		}
		pairs := make([]pair, 0, len(n.Content)/2)
		prev := -1
		for i := 0; i+1 < len(n.Content); i += 2 {
			p := pair{n.Content[i], n.Content[i+1], prev + 1}
			for j := 0; j+1 < len(old.Content); j += 2 {
				if ok := old.Content[j]; ok.Kind == yaml.ScalarNode && ok.Value == p.k.Value {
					p.at = 1000 * (j + 1) // room for the new keys after the one before
					exportRestyle(p.k, ok, level+1)
					exportRestyle(p.v, old.Content[j+1], level+1)
					break
				}
			}
			prev = p.at
			pairs = append(pairs, p)
		}
		sort.SliceStable(pairs, func(a, b int) bool { return pairs[a].at < pairs[b].at })
		for i, p := range pairs {
			n.Content[2*i], n.Content[2*i+1] = p.k, p.v
		}
	}
}

// exportMatch finds the unused entry of olds that c corresponds to: the
// same string, or the mapping with the same name (or app); -1 if none.
func exportMatch(c *yaml.Node, olds []*yaml.Node, used []bool) int {
	id := func(n *yaml.Node) (string, bool) {
		switch n.Kind {
		case yaml.ScalarNode:
			return "=" + n.Value, true
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				if k := n.Content[i].Value; (k == "name" || k == "app") && n.Content[i+1].Kind == yaml.ScalarNode {
					return k + "=" + n.Content[i+1].Value, true
				}
			}
		}
		return "", false
	}
	want, ok := id(c)
	if !ok {
		return -1
	}
	for j, o := range olds {
		if got, ok := id(o); ok && !used[j] && got == want && o.Kind == c.Kind {
			return j
		}
	}
	return -1
}

// exportGeneric returns v as a file holding it would decode into `any`.
func exportGeneric(v any) (any, error) {
	text, err := exportYAML(v)
	if err != nil {
		return nil, err
	}
	var out any
	if err := yaml.Unmarshal([]byte(text), &out); err != nil {
		return nil, fmt.Errorf("decode what was encoded: %w", err)
	}
	return out, nil
}

// exportEqual compares decoded YAML, with an empty list equal to none
// ("members: []" and no members say the same).
func exportEqual(a, b any) bool {
	return reflect.DeepEqual(exportNormal(a), exportNormal(b))
}

func exportNormal(v any) any {
	switch v := v.(type) {
	case []any:
		if len(v) == 0 {
			return nil
		}
		out := make([]any, len(v))
		for i, e := range v {
			out[i] = exportNormal(e)
		}
		return out
	case map[string]any:
		out := make(map[string]any, len(v))
		for k, e := range v {
			out[k] = exportNormal(e)
		}
		return out
	}
	return v
}

// apply returns what list old (decoded from the file) must become.
func (l *exportList) apply(old []any) []any {
	var out []any
	for i, it := range old {
		if l.del[i] {
			continue
		}
		if v, ok := l.set[i]; ok {
			it = v
		}
		if r, ok := l.rules[i]; ok {
			m, _ := it.(map[string]any)
			n := make(map[string]any, len(m)+1)
			for k, v := range m {
				n[k] = v
			}
			n["rules"] = r
			it = n
		}
		out = append(out, it)
	}
	return append(out, l.add...)
}

// result applies f's edits to its data.
func (f *exportFile) result() (string, error) {
	// Byte offset of the start of each line, and of the end of the data.
	starts := make([]int, 0, len(f.lines)+1)
	off := 0
	for _, l := range f.lines {
		starts = append(starts, off)
		off += len(l) + 1
	}
	starts = append(starts, len(f.data))
	edits := make([]udiff.Edit, 0, len(f.edits))
	for _, e := range f.edits {
		if e.first < 1 || e.last < e.first-1 || e.last > len(f.lines) {
			return "", fmt.Errorf("%s: internal error: edit of lines %d–%d out of range", f.doc.File(), e.first, e.last)
		}
		ed := udiff.Edit{Start: starts[e.first-1], End: starts[e.last], New: e.text}
		if ed.End == len(f.data) && f.data != "" && !strings.HasSuffix(f.data, "\n") {
			if e.last < e.first {
				ed.New = "\n" + ed.New // after a last line that has no "\n"
			}
		}
		edits = append(edits, ed)
	}
	udiff.SortEdits(edits)
	out, err := udiff.Apply(f.data, edits)
	if err != nil {
		return "", fmt.Errorf("%s: internal error: %w", f.doc.File(), err)
	}
	return out, nil
}

// verify checks that out, f's data after the edits, parses, that every
// edited list says what the change says, and that nothing else changed.
func (f *exportFile) verify(out string) error {
	name := f.doc.File()
	nd, err := config.Parse(name, []byte(out), new(yaml.Node))
	if err != nil {
		return fmt.Errorf("the edited %s would not parse, so no diff is offered: %w", name, err)
	}
	var oldRoot, newRoot any
	if _, err := f.doc.Decode("", &oldRoot); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if _, err := nd.Decode("", &newRoot); err != nil {
		return fmt.Errorf("the edited %s: %w", name, err)
	}
	wantRoot, isMap := oldRoot.(map[string]any)
	paths := make([]string, 0, len(f.lists))
	for p := range f.lists {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		var old, got []any
		if _, err := f.doc.Decode(p, &old); err != nil {
			return fmt.Errorf("%s: %s: %w", name, p, err)
		}
		want := f.lists[p].apply(old)
		if _, err := nd.Decode(p, &got); err != nil || !exportEqual(want, got) {
			return fmt.Errorf("%s: internal error: the edited %s would not say what the change says", name, p)
		}
		if isMap && !strings.ContainsAny(p, ".[") {
			if _, had := wantRoot[p]; had || len(want) > 0 {
				wantRoot[p] = want
			}
		}
	}
	if isMap && !exportEqual(wantRoot, newRoot) {
		return fmt.Errorf("%s: internal error: the edit would change more than the item", name)
	}
	return nil
}

// diff renders the edits of every file as one unified diff.
func (ex *exporter) diff(base string) (string, error) {
	type section struct {
		path string
		f    *exportFile
	}
	var sections []section
	for doc, f := range ex.files {
		if len(f.edits) == 0 {
			continue
		}
		p, err := exportPath(doc.File(), base)
		if err != nil {
			return "", err
		}
		sections = append(sections, section{p, f})
	}
	sort.Slice(sections, func(i, j int) bool { return sections[i].path < sections[j].path })
	var b strings.Builder
	for i, s := range sections {
		if i > 0 && sections[i-1].path == s.path {
			return "", fmt.Errorf("export: %s was loaded twice; cannot write one diff for both", s.path)
		}
		out, err := s.f.result()
		if err != nil {
			return "", fmt.Errorf("export: %w", err)
		}
		if err := s.f.verify(out); err != nil {
			return "", fmt.Errorf("export: %w", err)
		}
		b.WriteString(udiff.Unified("a/"+s.path, "b/"+s.path, s.f.data, out))
	}
	return b.String(), nil
}

// exportPath is the path a diff names a file by: relative to base when
// the file is under it, else as recorded, with forward slashes.
func exportPath(file, base string) (string, error) {
	p := file
	if base != "" {
		ab, err1 := filepath.Abs(base)
		af, err2 := filepath.Abs(file)
		if err1 == nil && err2 == nil {
			if rel, err := filepath.Rel(ab, af); err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
				p = rel
			}
		}
	}
	p = filepath.ToSlash(p)
	// A name with a line break would end the header line early and let
	// the rest of it pass for diff content.
	if p == "" || p == "." || !utf8.ValidString(p) || strings.ContainsFunc(p, unicode.IsControl) {
		return "", fmt.Errorf("export: file name %q cannot be written in a diff", file)
	}
	return p, nil
}
