package groups

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/ztna-dev/ztna/internal/config"
	"github.com/ztna-dev/ztna/internal/files"
)

// Source is a whole policy before compilation: groups and app rules from
// the config file and from the files of a policy directory, with where each
// item was written so that Compile's errors name the file, line and field.
// Items appended directly (in Go, as tests do) have no origin; their errors
// name the index instead.
type Source struct {
	Groups []Group
	Apps   []AppRules

	groupAt, appAt []origin // parallel to Groups and Apps when known
}

// origin is where a group or an app's rules were written.
type origin struct {
	doc      *config.Doc
	path     string // YAML path of the item: "groups[2]", "apps[1]"
	appField string // the key that names the app: "app" in policy files, "name" in the config
}

// AddFile appends the groups and app rules of one parsed policy file.
func (s *Source) AddFile(doc *config.Doc, f *File) {
	s.AddGroups(doc, "groups", f.Groups)
	for i, ar := range f.Apps {
		s.AddApp(doc, fmt.Sprintf("apps[%d]", i), "app", ar)
	}
}

// AddConfig appends the policy written in an edge config file: its
// groups (at "groups") and its apps' rules (apps[i].rules, the app named by
// apps[i].name), which come before any policy directory's.
func (s *Source) AddConfig(doc *config.Doc, gs []Group, apps []AppRules) {
	s.AddGroups(doc, "groups", gs)
	for i, ar := range apps {
		s.AddApp(doc, fmt.Sprintf("apps[%d]", i), "name", ar)
	}
}

// AddGroups appends groups written as the list at path of doc.
func (s *Source) AddGroups(doc *config.Doc, path string, gs []Group) {
	s.pad()
	for i, g := range gs {
		s.Groups = append(s.Groups, g)
		s.groupAt = append(s.groupAt, origin{doc: doc, path: fmt.Sprintf("%s[%d]", path, i)})
	}
}

// AddApp appends one app's rules written at path of doc, where appField
// is the key that holds the app's name.
func (s *Source) AddApp(doc *config.Doc, path, appField string, ar AppRules) {
	s.pad()
	s.Apps = append(s.Apps, ar)
	s.appAt = append(s.appAt, origin{doc: doc, path: path, appField: appField})
}

// pad gives items appended without an origin an empty one, keeping the
// origin slices parallel.
func (s *Source) pad() {
	for len(s.groupAt) < len(s.Groups) {
		s.groupAt = append(s.groupAt, origin{})
	}
	for len(s.appAt) < len(s.Apps) {
		s.appAt = append(s.appAt, origin{})
	}
}

// locate turns a *RuleError or *GroupError about an item with a known
// origin into a *config.FieldError naming its file, line and field.
func (s *Source) locate(err error) error {
	var re *RuleError
	var ge *GroupError
	switch {
	case errors.As(err, &re) && re.AppIndex < len(s.appAt) && s.appAt[re.AppIndex].doc != nil:
		o := s.appAt[re.AppIndex]
		path := o.path + "." + o.appField
		if re.Rule >= 0 {
			path = fmt.Sprintf("%s.rules[%d]", o.path, re.Rule)
			if re.Field != "" {
				path += "." + re.Field
			}
		}
		return o.doc.Errorf(path, "%s", re.Msg)
	case errors.As(err, &ge) && ge.Index < len(s.groupAt) && s.groupAt[ge.Index].doc != nil:
		o := s.groupAt[ge.Index]
		path := o.path
		if ge.Field != "" {
			path += "." + ge.Field
		}
		return o.doc.Errorf(path, "%s", ge.Msg)
	}
	return err
}

// where describes the origin of app entry i for messages that point at a
// second place ("also in …").
func (s *Source) whereApp(i int) string {
	if i < len(s.appAt) && s.appAt[i].doc != nil {
		o := s.appAt[i]
		return fmt.Sprintf("%s:%d", o.doc.File(), o.doc.Line(o.path))
	}
	return fmt.Sprintf("apps[%d]", i)
}

func (s *Source) whereGroup(i int) string {
	if i < len(s.groupAt) && s.groupAt[i].doc != nil {
		o := s.groupAt[i]
		return fmt.Sprintf("%s:%d", o.doc.File(), o.doc.Line(o.path))
	}
	return fmt.Sprintf("groups[%d]", i)
}

// Limits on a policy directory: it is written by people, so anything
// larger is a mistake (or a checkout of the wrong repository).
const (
	maxPolicyFiles = 1000
	maxPolicyDepth = 8
)

// IsPolicyFile reports whether name (a file name, not a path) is a policy
// file: YAML, not hidden, not a test file.
func IsPolicyFile(name string) bool {
	return isYAML(name) && !strings.HasPrefix(name, ".") && !IsTestFile(name)
}

// IsTestFile reports whether name is a policy test file (NAME_test.yaml).
func IsTestFile(name string) bool {
	base := strings.TrimSuffix(strings.TrimSuffix(name, ".yaml"), ".yml")
	return isYAML(name) && !strings.HasPrefix(name, ".") && strings.HasSuffix(base, "_test")
}

func isYAML(name string) bool {
	return strings.HasSuffix(name, ".yaml") || strings.HasSuffix(name, ".yml")
}

// ListFiles returns the files below dir for which keep is true, as sorted
// paths, skipping hidden directories (.git) and bounded in count and depth.
func ListFiles(dir string, keep func(name string) bool) ([]string, error) {
	var out []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		if d.IsDir() {
			if path != dir && strings.HasPrefix(d.Name(), ".") {
				return filepath.SkipDir
			}
			if strings.Count(rel, string(filepath.Separator)) >= maxPolicyDepth {
				return fmt.Errorf("%s: nested deeper than %d directories", path, maxPolicyDepth)
			}
			return nil
		}
		if !d.Type().IsRegular() && d.Type()&fs.ModeSymlink == 0 || !keep(d.Name()) {
			return nil
		}
		if len(out) == maxPolicyFiles {
			return fmt.Errorf("%s: more than %d policy files", dir, maxPolicyFiles)
		}
		out = append(out, path)
		return nil
	})
	if err != nil {
		return nil, err
	}
	sort.Strings(out)
	return out, nil
}

// LoadDir parses every policy file below dir (see IsPolicyFile), in path
// order, into s. A directory with no policy file is an error: an empty
// checkout must not silently become "deny everything" — or, worse, be
// mistaken for a successful deploy.
func LoadDir(dir string, s *Source) error {
	info, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("policy dir: %w", err)
	}
	if !info.IsDir() {
		return fmt.Errorf("policy dir %s: not a directory", dir)
	}
	paths, err := ListFiles(dir, IsPolicyFile)
	if err != nil {
		return fmt.Errorf("policy dir: %w", err)
	}
	if len(paths) == 0 {
		return fmt.Errorf("policy dir %s: no policy files (*.yaml)", dir)
	}
	for _, p := range paths {
		if err := LoadFile(p, s); err != nil {
			return err
		}
	}
	return nil
}

// LoadFile parses one policy file into s.
func LoadFile(path string, s *Source) error {
	data, _, err := files.ReadRegular(path, config.MaxFileSize)
	if err != nil {
		return fmt.Errorf("policy file: %w", err)
	}
	var f File
	doc, err := config.Parse(path, data, &f)
	if err != nil {
		return err
	}
	s.AddFile(doc, &f)
	return nil
}
