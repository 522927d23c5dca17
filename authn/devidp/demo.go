package devidp

// DemoUsers returns the demo accounts `ztna dev` prints and the integration
// tests log in as. Each call returns fresh copies.
func DemoUsers() []User {
	return []User{
		{
			Username: "alice", Password: "alice-password", Subject: "u-alice",
			Email: "alice@example.com", Name: "Alice Kim",
			Groups:     []string{"engineering", "security"},
			Attributes: map[string]string{"department": "Security Tech", "title": "Security Engineer"},
		},
		{
			Username: "bob", Password: "bob-password", Subject: "u-bob",
			Email: "bob@example.com", Name: "Bob Lee",
			Groups:     []string{"finance"},
			Attributes: map[string]string{"department": "Finance", "title": "Accountant"},
		},
		{
			Username: "carol", Password: "carol-password", Subject: "u-carol",
			Email: "carol@example.com", Name: "Carol Park",
			Groups:     []string{"contractors"},
			Attributes: map[string]string{"department": "External", "title": "Contractor"},
		},
		{
			Username: "admin", Password: "admin-password", Subject: "u-admin",
			Email: "admin@example.com", Name: "Dana Admin",
			Groups:     []string{"engineering", "ztna-admins"},
			Attributes: map[string]string{"department": "IT", "title": "Administrator"},
		},
	}
}
