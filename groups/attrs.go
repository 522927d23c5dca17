package groups

// Attrs is what a group condition (a group's `when` expression) sees: the
// subject's and the device's attributes. Conditions name them as
// user.<name>, user.groups, device.<name>, device.managed and
// device.profiles.
type Attrs struct {
	User     map[string]string // user.<name>; "id" and "email" are always set
	Groups   []string          // user.groups: the IdP's group claims
	Device   map[string]string // device.<name>: "id", "platform"; empty without a device
	Managed  bool              // device.managed: an enrolled device presented its certificate
	Profiles []string          // device.profiles: posture profiles the device meets now
}

// attrsOf is the view of a request's subject and device that conditions
// evaluate.
func attrsOf(s *Subject, d *Device) Attrs {
	a := Attrs{User: make(map[string]string, len(s.Attributes)+2), Groups: s.Groups, Device: map[string]string{}}
	for k, v := range s.Attributes {
		a.User[k] = v
	}
	a.User["id"], a.User["email"] = s.User, s.Email
	if d != nil {
		a.Device["id"], a.Device["platform"] = d.ID, d.Platform
		a.Managed = true
		a.Profiles = d.Profiles
	}
	return a
}
