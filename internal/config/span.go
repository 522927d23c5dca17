package config

import (
	"bytes"
	"strings"

	"go.yaml.in/yaml/v3"
)

// This file lets a caller rewrite one item of a file in place (the policy
// export in groups turns a console edit into a diff a reviewer can apply):
// where the item's lines are, the bytes they are in, and what a path holds.
// Nothing here changes the Doc.

// Data returns a copy of the bytes the Doc was parsed from; nil for the
// zero Doc.
func (d *Doc) Data() []byte {
	if d == nil {
		return nil
	}
	return bytes.Clone(d.data)
}

// Decode decodes the value at path (as Line resolves it, but exactly: no
// nearest ancestor) into out, without strictness: it is for reading back
// what a file says, not for loading it. found is false, and out untouched,
// when nothing is at path.
func (d *Doc) Decode(path string, out any) (found bool, err error) {
	n := d.node(path)
	if n == nil {
		return false, nil
	}
	return true, n.Decode(out)
}

// node returns the node at path, following aliases and merge keys, or nil.
func (d *Doc) node(path string) *yaml.Node {
	if d == nil || d.root == nil {
		return nil
	}
	segs, ok := splitPath(path)
	if !ok {
		return nil
	}
	n := d.root
	for _, s := range segs {
		n = resolve(n)
		if s.isIndex {
			if n.Kind != yaml.SequenceNode || s.index >= len(n.Content) {
				return nil
			}
			n = n.Content[s.index]
			continue
		}
		if _, n = lookup(n, s.key); n == nil {
			return nil
		}
	}
	return resolve(n)
}

// Span returns the lines the item at path occupies, so that a caller can
// replace or delete exactly that item and leave every other byte of the
// file as it is. For a list item ("groups[2]") the span starts at the line
// of its "- "; for a mapping entry ("apps[1].rules") at the line of its
// key. It ends before the next sibling (or the next entry of an enclosing
// block, or the end of the file), without the trailing blank lines and the
// trailing comment lines indented no deeper than the item, which introduce
// what follows rather than belong to the item. first and last are 1-based
// and inclusive; indent is the 0-based column of the "-" or the key.
//
// The text before indent on the first line is indentation, or the "- " of
// an enclosing list item whose first entry this is ("  - rules: []"); a
// replacement keeps it. ok is false when there is no such item, when it is
// written inside a flow collection ("[a, b]", "{k: v}"), where it shares
// lines with its siblings, or when the path goes through an alias or a
// merge key, where editing it would edit something written elsewhere.
func (d *Doc) Span(path string) (first, last, indent int, ok bool) {
	if d == nil || d.root == nil || len(d.data) == 0 {
		return 0, 0, 0, false
	}
	segs, ok := splitPath(path)
	if !ok {
		return 0, 0, 0, false
	}
	lines := splitLines(d.data)

	// Walk down, recording each step as (container, index of the child
	// in its Content: the key's index for a mapping).
	var steps []spanStep
	n := d.root
	for _, s := range segs {
		if n.Kind == yaml.AliasNode || n.Style&yaml.FlowStyle != 0 {
			return 0, 0, 0, false
		}
		i := -1
		switch {
		case s.isIndex && n.Kind == yaml.SequenceNode && s.index < len(n.Content):
			i = s.index
		case !s.isIndex && n.Kind == yaml.MappingNode:
			for k := 0; k+1 < len(n.Content); k += 2 {
				if kn := n.Content[k]; kn.Kind == yaml.ScalarNode && kn.Value == s.key && kn.Tag != "!!merge" {
					i = k
					break
				}
			}
		}
		if i < 0 {
			return 0, 0, 0, false
		}
		steps = append(steps, spanStep{n, i})
		if n.Kind == yaml.MappingNode {
			n = n.Content[i+1]
		} else {
			n = n.Content[i]
		}
	}

	if len(steps) == 0 { // the whole document
		first, indent = d.root.Line, d.root.Column-1
		if d.root.Style&yaml.FlowStyle != 0 {
			return 0, 0, 0, false
		}
	} else if first, indent, ok = startOf(lines, steps[len(steps)-1]); !ok {
		return 0, 0, 0, false
	}
	if first < 1 || first > len(lines) || indent < 0 || indent >= len(lines[first-1]) ||
		strings.Trim(lines[first-1][:indent], " -") != "" {
		return 0, 0, 0, false
	}

	// The item ends where the next thing at its level or above starts.
	bound := len(lines) + 1
	for j := len(steps) - 1; j >= 0; j-- {
		st := steps[j]
		next := st.i + 1
		if st.parent.Kind == yaml.MappingNode {
			next = st.i + 2
		}
		if next < len(st.parent.Content) {
			l, _, ok := startOf(lines, spanStep{st.parent, next})
			if !ok {
				return 0, 0, 0, false
			}
			bound = l
			break
		}
	}
	last = bound - 1
	for last > first && trailer(lines[last-1], indent) {
		last--
	}
	if last < first {
		return 0, 0, 0, false
	}
	return first, last, indent, true
}

// spanStep is one step of a path: the i-th child of parent (for a
// mapping, i is the index of the key in Content).
type spanStep struct {
	parent *yaml.Node
	i      int
}

// startOf returns the line and 0-based column where the child st starts:
// its key in a mapping, its "-" in a block list.
func startOf(lines []string, st spanStep) (line, col int, ok bool) {
	p := st.parent
	if p.Kind == yaml.MappingNode {
		k := p.Content[st.i]
		return k.Line, k.Column - 1, true
	}
	// A block list's node is positioned at its first "-", and every "-"
	// of the list is in that column. An item's content may start lines
	// after its "-" ("-  # note" then the mapping), so look back from the
	// content for the line with the "-" in that column and only spaces
	// before it: inside the previous item nothing else can be there,
	// since its content is indented deeper than the list.
	dash := p.Column - 1
	if st.i == 0 {
		return p.Line, dash, true
	}
	item, prev := p.Content[st.i], p.Content[st.i-1]
	for l := item.Line; l > prev.Line && l >= 1 && l <= len(lines); l-- {
		s := lines[l-1]
		if len(s) > dash && s[dash] == '-' && strings.Trim(s[:dash], " ") == "" &&
			(len(s) == dash+1 || s[dash+1] == ' ' || s[dash+1] == '\t') {
			return l, dash, true
		}
	}
	return 0, 0, false
}

// trailer reports whether line, at the end of an item written at column
// indent, belongs to what follows: a blank line, a comment no deeper than
// the item, or a document end marker.
func trailer(line string, indent int) bool {
	t := strings.TrimLeft(line, " \t")
	switch {
	case t == "", t == "...":
		return true
	case t[0] == '#':
		return len(line)-len(t) <= indent
	}
	return false
}

// splitLines splits data into lines without their "\n"; a final line
// without one counts, an empty one after the last "\n" does not.
func splitLines(data []byte) []string {
	s := strings.TrimSuffix(string(data), "\n")
	if s == "" && len(data) == 0 {
		return nil
	}
	return strings.Split(s, "\n")
}
