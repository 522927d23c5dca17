package authn

// Identity is who a request comes from, as the IdP asserted it. It is built
// from ID-token and userinfo claims at login and refreshed with the tokens.
// Attribute keys are ztna's names (department, title, …), mapped from claim
// names by ClaimsConfig.
type Identity struct {
	Subject    string            `json:"sub"`
	Email      string            `json:"email,omitempty"`
	Name       string            `json:"name,omitempty"`
	Groups     []string          `json:"groups,omitempty"`
	Attributes map[string]string `json:"attrs,omitempty"`
}
