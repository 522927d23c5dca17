package config

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
)

// spanDoc numbers its lines in comments where it helps to read the cases.
const spanDoc = `# policy
groups:
  # head of eng
  - name: eng
    when: |
      user.x == "y"
      # inside the block scalar, not a comment
    members: [a, b]
    # deeper than the item: belongs to it

  # about ops
  - name: ops
    members:
      - c
  -   # content on the next line
    name: late
# about apps
apps:
  - rules:
      - name: r1
    app: wiki
  - app: flow
    rules: [{name: r2}]
  - {app: inline, rules: []}
anchors:
  base: &base {name: x}
  copy: *base
indentless:
- one
- two
last: 1

`

func TestSpan(t *testing.T) {
	d, err := Parse("span.yaml", []byte(spanDoc), new(any))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		path                string
		first, last, indent int
		ok                  bool
	}{
		{"groups", 2, 16, 0, true},
		{"groups[0]", 4, 9, 2, true},   // the blank line and the comment at the item's column excluded
		{"groups[1]", 12, 14, 2, true}, // from its "-", after the comment above it
		{"groups[2]", 15, 16, 2, true}, // "-" on a line of its own; the comment at column 0 excluded
		{"groups[0].when", 5, 7, 4, true},
		{"groups[0].members", 8, 8, 4, true}, // the comment at the key's column goes with what follows
		{"groups[1].members", 13, 14, 4, true},
		{"groups[1].members[0]", 14, 14, 6, true},
		{"apps[0]", 19, 21, 2, true},
		{"apps[0].rules", 19, 20, 4, true}, // first entry of the item: shares the line with its "- "
		{"apps[0].app", 21, 21, 4, true},
		{"apps[1].rules", 23, 23, 4, true},
		{"apps[2]", 24, 24, 2, true},
		{"indentless", 28, 30, 0, true},
		{"indentless[1]", 30, 30, 0, true},
		{"last", 31, 31, 0, true}, // the trailing blank line excluded
		{"", 2, 31, 0, true},

		{"apps[1].rules[0]", 0, 0, 0, false}, // inside a flow list
		{"apps[2].app", 0, 0, 0, false},      // inside a flow mapping
		{"anchors.copy.name", 0, 0, 0, false},
		{"groups[3]", 0, 0, 0, false},
		{"nope", 0, 0, 0, false},
		{"groups[", 0, 0, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			first, last, indent, ok := d.Span(tt.path)
			if first != tt.first || last != tt.last || indent != tt.indent || ok != tt.ok {
				t.Errorf("Span(%q) = %d, %d, %d, %v; want %d, %d, %d, %v",
					tt.path, first, last, indent, ok, tt.first, tt.last, tt.indent, tt.ok)
			}
		})
	}
}

// TestSpanReplace proves what Span is for: replacing the lines of one
// item leaves a file that parses, with that item changed and the rest,
// comments included, byte for byte the same.
func TestSpanReplace(t *testing.T) {
	d, err := Parse("span.yaml", []byte(spanDoc), new(any))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		path string
		repl []string // the new lines at column 0; the first is placed after the original prefix
		want any      // what path decodes to afterwards
	}{
		{"groups[0]", []string{"- name: dev", "  members: [d]"}, map[string]any{"name": "dev", "members": []any{"d"}}},
		{"groups[2]", []string{"- name: early"}, map[string]any{"name": "early"}},
		{"apps[0].rules", []string{"rules: []"}, []any{}},
		{"groups[1].members[0]", []string{"- z"}, "z"},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			first, last, indent, ok := d.Span(tt.path)
			if !ok {
				t.Fatalf("Span(%q) not ok", tt.path)
			}
			lines := strings.SplitAfter(spanDoc, "\n")
			var b strings.Builder
			for _, l := range lines[:first-1] {
				b.WriteString(l)
			}
			for i, r := range tt.repl {
				if i == 0 {
					b.WriteString(lines[first-1][:indent])
				} else {
					b.WriteString(strings.Repeat(" ", indent))
				}
				b.WriteString(r + "\n")
			}
			for _, l := range lines[last:] {
				b.WriteString(l)
			}
			out := b.String()
			nd, err := Parse("out.yaml", []byte(out), new(any))
			if err != nil {
				t.Fatalf("result does not parse: %v\n%s", err, out)
			}
			var got any
			if found, err := nd.Decode(tt.path, &got); !found || err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Errorf("%s = %#v (found %v, %v), want %#v\n%s", tt.path, got, found, err, tt.want, out)
			}
			// Everything else still says what it said.
			for _, other := range []string{"groups[0]", "groups[1]", "groups[2]", "apps", "anchors", "indentless", "last"} {
				if strings.HasPrefix(tt.path, other) {
					continue
				}
				var before, after any
				if _, err := d.Decode(other, &before); err != nil {
					t.Fatal(err)
				}
				if _, err := nd.Decode(other, &after); err != nil || !reflect.DeepEqual(before, after) {
					t.Errorf("%s changed: %#v → %#v (%v)", other, before, after, err)
				}
			}
			for _, c := range []string{"# policy", "# head of eng", "# about ops", "# about apps"} {
				if !strings.Contains(out, c+"\n") {
					t.Errorf("comment %q lost:\n%s", c, out)
				}
			}
		})
	}
}

func TestDecodeAndData(t *testing.T) {
	src := []byte("base: &b {name: x}\nitems:\n  - <<: *b\n    extra: 1\n")
	d, err := Parse("d.yaml", src, new(any))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		path  string
		found bool
		want  any
	}{
		{"items[0].name", true, "x"}, // through the merge key
		{"items[0].extra", true, 1},
		{"base", true, map[string]any{"name": "x"}},
		{"items[1]", false, nil},
		{"items.name", false, nil},
	}
	for _, tt := range tests {
		var got any
		found, err := d.Decode(tt.path, &got)
		if err != nil || found != tt.found || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("Decode(%q) = %#v, %v, %v; want %#v, %v", tt.path, got, found, err, tt.want, tt.found)
		}
	}

	data := d.Data()
	if !bytes.Equal(data, src) {
		t.Errorf("Data() = %q, want %q", data, src)
	}
	data[0] = 'X'
	src[1] = 'Y'
	if got := d.Data(); got[0] != 'b' || got[1] != 'a' {
		t.Errorf("Data() shares memory with the caller: %q", got)
	}
	var zero *Doc
	if zero.Data() != nil {
		t.Error("nil Doc has data")
	}
	if _, _, _, ok := zero.Span(""); ok {
		t.Error("nil Doc has a span")
	}
	if found, err := zero.Decode("", new(any)); found || err != nil {
		t.Errorf("nil Doc Decode = %v, %v", found, err)
	}
}
