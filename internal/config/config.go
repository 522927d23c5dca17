// Package config loads YAML configuration files strictly: unknown fields,
// duplicate keys, several documents in one file and oversized files are
// errors, and every error names the file, the line and the field, so a bad
// config is one clear line ("ztna.yaml:12: apps[0].upstream: …").
//
// It knows nothing about ztna's settings; packages own their config structs
// and their validation, and use Doc to point at the offending line.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// MaxFileSize bounds a config file.
const MaxFileSize = 4 << 20

// FieldError is a config error at a field.
type FieldError struct {
	File  string
	Line  int
	Field string
	Msg   string
}

func (e *FieldError) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		b.WriteString(":" + strconv.Itoa(e.Line))
	}
	if e.Field != "" {
		b.WriteString(": " + e.Field)
	}
	b.WriteString(": " + e.Msg)
	return b.String()
}

// Doc is a parsed file that can name the line of a field.
type Doc struct {
	name string
	root *yaml.Node
}

// Load reads the YAML file at path into out (a pointer to a struct with yaml
// tags).
func Load(path string, out any) (*Doc, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return Parse(path, data, out)
}

// Parse is Load for bytes; name is used in errors.
func Parse(name string, data []byte, out any) (*Doc, error) {
	if len(data) > MaxFileSize {
		return nil, &FieldError{File: name, Msg: fmt.Sprintf("file is larger than %d bytes", MaxFileSize)}
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var root yaml.Node
	if err := dec.Decode(&root); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, &FieldError{File: name, Msg: "file is empty"}
		}
		return nil, yamlError(name, nil, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, &FieldError{File: name, Line: extra.Line, Msg: "more than one YAML document; put the whole config in one"}
	}
	doc := &Doc{name: name, root: &root}
	strict := yaml.NewDecoder(bytes.NewReader(data))
	strict.KnownFields(true)
	if err := strict.Decode(out); err != nil {
		return nil, yamlError(name, doc, err)
	}
	return doc, nil
}

var lineRE = regexp.MustCompile(`line (\d+): (.*)`)
var unknownFieldRE = regexp.MustCompile(`field (\S+) not found in type (\S+)`)

// yamlError turns a yaml error into FieldErrors naming file and line.
func yamlError(name string, doc *Doc, err error) error {
	var te *yaml.TypeError
	msgs := []string{err.Error()}
	if errors.As(err, &te) {
		msgs = te.Errors
	}
	m := lineRE.FindStringSubmatch(msgs[0])
	if m == nil {
		return &FieldError{File: name, Msg: strings.TrimPrefix(msgs[0], "yaml: ")}
	}
	line, _ := strconv.Atoi(m[1])
	msg := m[2]
	field := ""
	if u := unknownFieldRE.FindStringSubmatch(msg); u != nil {
		field = u[1]
		msg = "unknown field"
		if doc != nil {
			if p := doc.pathAtLine(line, u[1]); p != "" {
				field = p
			}
		}
	} else if doc != nil {
		field = doc.pathAtLine(line, "")
	}
	return &FieldError{File: name, Line: line, Field: field, Msg: msg}
}

// pathAtLine finds the dotted path of the mapping key on line (named key if
// given).
func (d *Doc) pathAtLine(line int, key string) string {
	var found string
	var walk func(n *yaml.Node, path string)
	walk = func(n *yaml.Node, path string) {
		if found != "" || n == nil {
			return
		}
		switch n.Kind {
		case yaml.DocumentNode:
			for _, c := range n.Content {
				walk(c, path)
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				p := k.Value
				if path != "" {
					p = path + "." + k.Value
				}
				if k.Line == line && (key == "" || k.Value == key) {
					found = p
					return
				}
				if v.Line == line && key == "" && v.Kind == yaml.ScalarNode {
					found = p
					return
				}
				walk(v, p)
			}
		case yaml.SequenceNode:
			for i, c := range n.Content {
				walk(c, fmt.Sprintf("%s[%d]", path, i))
			}
		}
	}
	walk(d.root, "")
	return found
}

// Line returns the 1-based line of the value at a dotted path like
// "apps[2].rules[0].methods", or of its nearest existing ancestor, or 0.
func (d *Doc) Line(path string) int {
	if d == nil || d.root == nil {
		return 0
	}
	n := d.root
	if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	line := n.Line
	for _, part := range splitPath(path) {
		next := child(n, part)
		if next == nil {
			break
		}
		n = next
		line = n.Line
	}
	return line
}

// pathPart is one step: a key or an index.
type pathPart struct {
	key   string
	index int // -1 for keys
}

func splitPath(path string) []pathPart {
	var parts []pathPart
	for _, seg := range strings.Split(path, ".") {
		name, rest, _ := strings.Cut(seg, "[")
		if name != "" {
			parts = append(parts, pathPart{key: name, index: -1})
		}
		for rest != "" {
			idx, after, ok := strings.Cut(rest, "]")
			if !ok {
				break
			}
			if i, err := strconv.Atoi(idx); err == nil {
				parts = append(parts, pathPart{index: i})
			}
			rest = strings.TrimPrefix(after, "[")
		}
	}
	return parts
}

func child(n *yaml.Node, p pathPart) *yaml.Node {
	switch {
	case p.index >= 0 && n.Kind == yaml.SequenceNode:
		if p.index < len(n.Content) {
			return n.Content[p.index]
		}
	case p.index < 0 && n.Kind == yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == p.key {
				return n.Content[i+1]
			}
		}
	}
	return nil
}

// Errorf builds a *FieldError for path.
func (d *Doc) Errorf(path, format string, args ...any) *FieldError {
	name := ""
	if d != nil {
		name = d.name
	}
	return &FieldError{File: name, Line: d.Line(path), Field: path, Msg: fmt.Sprintf(format, args...)}
}
