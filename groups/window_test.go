package groups

import (
	"math/rand/v2"
	"testing"
	"time"
)

func TestCompileTimeWindowErrors(t *testing.T) {
	tests := []struct {
		name       string
		w          TimeWindow
		field, msg string
	}{
		{"no zone", TimeWindow{From: "08:00", To: "20:00"}, "zone", `required: an IANA time zone such as "Asia/Seoul" or "UTC"`},
		{"unknown zone", TimeWindow{Zone: "Asia/Nowhere"}, "zone", `unknown time zone "Asia/Nowhere": use an IANA name such as "Asia/Seoul" or "UTC"`},
		{"path-like zone", TimeWindow{Zone: "../../etc/passwd"}, "zone", `unknown time zone "../../etc/passwd": use an IANA name such as "Asia/Seoul" or "UTC"`},
		{"local zone", TimeWindow{Zone: "Local"}, "zone", `"Local" depends on the server; name the zone, such as "Asia/Seoul" or "UTC"`},
		{"capitalised day", TimeWindow{Days: []string{"mon", "Tue"}, Zone: "UTC"}, "days[1]", `"Tue": write the day as "tue"`},
		{"full day name", TimeWindow{Days: []string{"monday"}, Zone: "UTC"}, "days[0]", `"monday": write the day as "mon"`},
		{"abbreviation", TimeWindow{Days: []string{"Tues"}, Zone: "UTC"}, "days[0]", `"Tues": write the day as "tue"`},
		{"capitalised range", TimeWindow{Days: []string{"Mon-fri"}, Zone: "UTC"}, "days[0]", `"Mon-fri": write the day as "mon"`},
		{"not a day", TimeWindow{Days: []string{"x"}, Zone: "UTC"}, "days[0]", `"x" is not a day: use mon, tue, wed, thu, fri, sat, sun or a range such as "mon-fri"`},
		{"empty day", TimeWindow{Days: []string{""}, Zone: "UTC"}, "days[0]", `"" is not a day: use mon, tue, wed, thu, fri, sat, sun or a range such as "mon-fri"`},
		{"half range", TimeWindow{Days: []string{"mon-"}, Zone: "UTC"}, "days[0]", `"mon-" is not a day: use mon, tue, wed, thu, fri, sat, sun or a range such as "mon-fri"`},
		{"three-part range", TimeWindow{Days: []string{"mon-wed-fri"}, Zone: "UTC"}, "days[0]", `"mon-wed-fri" is not a day: use mon, tue, wed, thu, fri, sat, sun or a range such as "mon-fri"`},
		{"spaced range", TimeWindow{Days: []string{"mon - fri"}, Zone: "UTC"}, "days[0]", `"mon - fri" is not a day: use mon, tue, wed, thu, fri, sat, sun or a range such as "mon-fri"`},
		{"one-day range", TimeWindow{Days: []string{"wed-wed"}, Zone: "UTC"}, "days[0]", `"wed-wed" is a range of one day: write "wed"`},
		{"from without to", TimeWindow{From: "08:00", Zone: "UTC"}, "to", `required when "from" is set (leave both out for all day)`},
		{"to without from", TimeWindow{To: "20:00", Zone: "UTC"}, "from", `required when "to" is set (leave both out for all day)`},
		{"one-digit hour", TimeWindow{From: "8:00", To: "20:00", Zone: "UTC"}, "from", `"8:00" is not a time of day: write HH:MM on a 24-hour clock, such as "08:00" or "20:30"`},
		{"seconds", TimeWindow{From: "08:00", To: "20:00:00", Zone: "UTC"}, "to", `"20:00:00" is not a time of day: write HH:MM on a 24-hour clock, such as "08:00" or "20:30"`},
		{"am/pm", TimeWindow{From: "8am", To: "20:00", Zone: "UTC"}, "from", `"8am" is not a time of day: write HH:MM on a 24-hour clock, such as "08:00" or "20:30"`},
		{"hour 25", TimeWindow{From: "08:00", To: "25:00", Zone: "UTC"}, "to", `"25:00" is not a time of day: write HH:MM on a 24-hour clock, such as "08:00" or "20:30"`},
		{"minute 60", TimeWindow{From: "08:60", To: "20:00", Zone: "UTC"}, "from", `"08:60" is not a time of day: write HH:MM on a 24-hour clock, such as "08:00" or "20:30"`},
		{"24:30", TimeWindow{From: "08:00", To: "24:30", Zone: "UTC"}, "to", `"24:30" is not a time of day: write HH:MM on a 24-hour clock, such as "08:00" or "20:30"`},
		{"sign", TimeWindow{From: "-1:00", To: "20:00", Zone: "UTC"}, "from", `"-1:00" is not a time of day: write HH:MM on a 24-hour clock, such as "08:00" or "20:30"`},
		{"from 24:00", TimeWindow{From: "24:00", To: "06:00", Zone: "UTC"}, "from", `"24:00" is only allowed in "to": write "00:00"`},
		{"empty window", TimeWindow{From: "08:00", To: "08:00", Zone: "UTC"}, "to", `equals "from" (08:00), which would be an empty window; leave both out for all day`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, field, msg := compileTimeWindow(tc.w)
			if field != tc.field || msg != tc.msg {
				t.Errorf("compileTimeWindow(%+v):\n got %s: %s\nwant %s: %s", tc.w, field, msg, tc.field, tc.msg)
			}
		})
	}
}

func TestTimeWindowString(t *testing.T) {
	tests := []struct {
		w    TimeWindow
		want string
	}{
		{TimeWindow{Days: []string{"mon-fri"}, From: "08:00", To: "20:00", Zone: "Asia/Seoul"}, "mon-fri 08:00–20:00 Asia/Seoul"},
		{TimeWindow{Zone: "UTC"}, "every day all day UTC"},
		{TimeWindow{From: "00:00", To: "24:00", Zone: "UTC"}, "every day 00:00–24:00 UTC"},
		{TimeWindow{Days: []string{"fri"}, From: "22:00", To: "06:00", Zone: "Europe/Berlin"}, "fri 22:00–06:00 Europe/Berlin"},
		{TimeWindow{Days: []string{"fri", "mon", "wed"}, Zone: "UTC"}, "mon,wed,fri all day UTC"},
		{TimeWindow{Days: []string{"fri-mon"}, Zone: "UTC"}, "fri-mon all day UTC"},
		{TimeWindow{Days: []string{"sun", "sat"}, Zone: "UTC"}, "sat-sun all day UTC"},
		{TimeWindow{Days: []string{"sun"}, Zone: "UTC"}, "sun all day UTC"},
		{TimeWindow{Days: []string{"mon", "tue", "thu"}, Zone: "UTC"}, "mon-tue,thu all day UTC"},
		{TimeWindow{Days: []string{"sun", "mon", "wed"}, Zone: "UTC"}, "sun-mon,wed all day UTC"},
		{TimeWindow{Days: []string{"mon-wed", "tue-sun"}, Zone: "UTC"}, "every day all day UTC"},
	}
	for _, tc := range tests {
		tw, field, msg := compileTimeWindow(tc.w)
		if msg != "" {
			t.Fatalf("compileTimeWindow(%+v): %s: %s", tc.w, field, msg)
		}
		if got := tw.String(); got != tc.want {
			t.Errorf("String() of %+v = %q, want %q", tc.w, got, tc.want)
		}
	}
}

func TestTimeWindowContains(t *testing.T) {
	seoulOffice := TimeWindow{Days: []string{"mon-fri"}, From: "08:00", To: "20:00", Zone: "Asia/Seoul"}
	nyOffice := TimeWindow{Days: []string{"mon-fri"}, From: "08:00", To: "20:00", Zone: "America/New_York"}
	nyTwoToThree := TimeWindow{From: "02:00", To: "03:00", Zone: "America/New_York"}
	nyOneToTwo := TimeWindow{From: "01:00", To: "02:00", Zone: "America/New_York"}
	berlinTwoToThree := TimeWindow{From: "02:00", To: "03:00", Zone: "Europe/Berlin"}
	berlinSatNight := TimeWindow{Days: []string{"sat"}, From: "22:00", To: "06:00", Zone: "Europe/Berlin"}
	friNight := TimeWindow{Days: []string{"fri"}, From: "22:00", To: "06:00", Zone: "Asia/Seoul"}
	sunNight := TimeWindow{Days: []string{"sun"}, From: "23:00", To: "01:00", Zone: "UTC"}
	friEvening := TimeWindow{Days: []string{"fri"}, From: "18:00", To: "24:00", Zone: "UTC"}
	weekend := TimeWindow{Days: []string{"sat-sun"}, Zone: "Asia/Seoul"}

	tests := []struct {
		name string
		w    TimeWindow
		t    string // RFC 3339
		want bool
	}{
		// Asia/Seoul has no daylight saving time.
		{"seoul monday morning", seoulOffice, "2026-11-23T10:00:00+09:00", true},
		{"seoul same instant in UTC", seoulOffice, "2026-11-23T01:00:00Z", true},
		{"seoul from is inclusive", seoulOffice, "2026-11-23T08:00:00+09:00", true},
		{"seoul before from", seoulOffice, "2026-11-23T07:59:59+09:00", false},
		{"seoul last second", seoulOffice, "2026-11-23T19:59:59.999+09:00", true},
		{"seoul to is exclusive", seoulOffice, "2026-11-23T20:00:00+09:00", false},
		{"seoul saturday", seoulOffice, "2026-11-28T10:00:00+09:00", false},
		{"seoul friday in UTC is saturday in seoul", seoulOffice, "2026-11-27T23:30:00Z", false},
		{"seoul sunday in UTC is monday in seoul", seoulOffice, "2026-11-22T23:30:00Z", true},
		{"seoul weekend all day", weekend, "2026-11-28T00:00:00+09:00", true},
		{"seoul weekend ends at monday midnight", weekend, "2026-11-23T00:00:00+09:00", false},
		{"seoul weekend sunday night", weekend, "2026-11-29T23:59:59+09:00", true},

		// America/New_York, spring forward on Sunday 2026-03-08: 02:00 EST
		// becomes 03:00 EDT, so 02:00–03:00 never happens that day.
		{"ny 01:59:59 EST, before the gap", nyTwoToThree, "2026-03-08T06:59:59Z", false},
		{"ny 03:00 EDT, right after the gap", nyTwoToThree, "2026-03-08T07:00:00Z", false},
		{"ny 02:30 the day before", nyTwoToThree, "2026-03-07T07:30:00Z", true},
		{"ny 02:30 the day after (EDT)", nyTwoToThree, "2026-03-09T06:30:00Z", true},
		{"ny office friday before the change (EST)", nyOffice, "2026-03-06T13:00:00Z", true},
		{"ny office friday 07:30 EST", nyOffice, "2026-03-06T12:30:00Z", false},
		{"ny office monday after the change (EDT)", nyOffice, "2026-03-09T12:00:00Z", true},
		{"ny office monday 07:30 EDT", nyOffice, "2026-03-09T11:30:00Z", false},
		{"ny office monday 19:59 EDT", nyOffice, "2026-03-09T23:59:00Z", true},
		{"ny office monday 20:00 EDT", nyOffice, "2026-03-10T00:00:00Z", false},
		// Fall back on Sunday 2026-11-01: 02:00 EDT becomes 01:00 EST, so
		// 01:00–02:00 happens twice, and both are inside.
		{"ny 00:59 EDT", nyOneToTwo, "2026-11-01T04:59:00Z", false},
		{"ny first 01:30 (EDT)", nyOneToTwo, "2026-11-01T05:30:00Z", true},
		{"ny second 01:00 (EST)", nyOneToTwo, "2026-11-01T06:00:00Z", true},
		{"ny second 01:30 (EST)", nyOneToTwo, "2026-11-01T06:30:00Z", true},
		{"ny 02:00 EST", nyOneToTwo, "2026-11-01T07:00:00Z", false},
		{"ny office monday after fall back (EST)", nyOffice, "2026-11-02T13:00:00Z", true},
		{"ny office monday 07:00 EST", nyOffice, "2026-11-02T12:00:00Z", false},

		// Europe/Berlin, spring forward on Sunday 2026-03-29 (02:00 CET →
		// 03:00 CEST) and fall back on Sunday 2026-10-25 (03:00 CEST →
		// 02:00 CET).
		{"berlin gap: 01:59 CET", berlinTwoToThree, "2026-03-29T00:59:00Z", false},
		{"berlin gap: 03:00 CEST", berlinTwoToThree, "2026-03-29T01:00:00Z", false},
		{"berlin overnight across spring forward: 23:00 sat", berlinSatNight, "2026-03-28T22:00:00Z", true},
		{"berlin overnight across spring forward: 05:59 CEST sun", berlinSatNight, "2026-03-29T03:59:00Z", true},
		{"berlin overnight across spring forward: 06:00 CEST sun", berlinSatNight, "2026-03-29T04:00:00Z", false},
		{"berlin overnight: 21:59 CET sat", berlinSatNight, "2026-03-28T20:59:00Z", false},
		{"berlin first 02:30 (CEST)", berlinTwoToThree, "2026-10-25T00:30:00Z", true},
		{"berlin second 02:30 (CET)", berlinTwoToThree, "2026-10-25T01:30:00Z", true},
		{"berlin 03:00 CET", berlinTwoToThree, "2026-10-25T02:00:00Z", false},
		{"berlin 01:59 CEST", berlinTwoToThree, "2026-10-24T23:59:00Z", false},

		// Overnight windows belong to the day they start.
		{"friday night start", friNight, "2026-11-27T22:00:00+09:00", true},
		{"friday night before start", friNight, "2026-11-27T21:59:00+09:00", false},
		{"friday night continues saturday", friNight, "2026-11-28T05:59:00+09:00", true},
		{"friday night ends saturday 06:00", friNight, "2026-11-28T06:00:00+09:00", false},
		{"friday morning is thursday's night, not listed", friNight, "2026-11-27T01:00:00+09:00", false},
		{"saturday 22:00 is not a listed start", friNight, "2026-11-28T22:00:00+09:00", false},

		// Week wrap: a Sunday-night window ends on Monday.
		{"sunday 23:00", sunNight, "2026-11-29T23:00:00Z", true},
		{"monday 00:30 belongs to sunday's window", sunNight, "2026-11-30T00:30:00Z", true},
		{"monday 01:00", sunNight, "2026-11-30T01:00:00Z", false},
		{"sunday 00:30 would be saturday's window", sunNight, "2026-11-29T00:30:00Z", false},
		{"monday 23:30", sunNight, "2026-11-30T23:30:00Z", false},

		// "24:00" is the end of the day.
		{"friday 23:59:59", friEvening, "2026-11-27T23:59:59Z", true},
		{"saturday 00:00", friEvening, "2026-11-28T00:00:00Z", false},
		{"friday 18:00", friEvening, "2026-11-27T18:00:00Z", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tw, field, msg := compileTimeWindow(tc.w)
			if msg != "" {
				t.Fatalf("compileTimeWindow: %s: %s", field, msg)
			}
			at, err := time.Parse(time.RFC3339Nano, tc.t)
			if err != nil {
				t.Fatal(err)
			}
			if got := tw.contains(at); got != tc.want {
				t.Errorf("%s contains %s (%s there) = %v, want %v", tw, tc.t, at.In(tw.loc).Format("Mon 15:04 MST"), got, tc.want)
			}
		})
	}
}

// refContains is an independent statement of the semantics: t is inside if
// its wall-clock (date, minute) lies in [start, end) of the occurrence that
// starts on its local day or on the day before, where each occurrence is
// laid out on a civil calendar that knows nothing of time zones.
func refContains(w TimeWindow, t time.Time, loc *time.Location) bool {
	listed := func(d time.Weekday) bool {
		for _, name := range w.Days {
			if name == weekdayNames[d] {
				return true
			}
		}
		return len(w.Days) == 0
	}
	lt := t.In(loc)
	y, mo, d := lt.Date()
	today := time.Date(y, mo, d, 0, 0, 0, 0, time.UTC) // civil date
	now := today.Add(time.Duration(lt.Hour()*60+lt.Minute()) * time.Minute)
	from, to := 0, minutesPerDay
	if w.From != "" {
		from, _ = parseClock(w.From, false)
		to, _ = parseClock(w.To, true)
	}
	for back := 0; back <= 1; back++ {
		start := today.AddDate(0, 0, -back)
		if !listed(start.Weekday()) {
			continue
		}
		end := start.Add(time.Duration(to) * time.Minute)
		if to <= from {
			end = end.AddDate(0, 0, 1)
		}
		begin := start.Add(time.Duration(from) * time.Minute)
		if !now.Before(begin) && now.Before(end) {
			return true
		}
	}
	return false
}

func TestTimeWindowContainsAgreesWithReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	zones := []string{"UTC", "Asia/Seoul", "America/New_York", "Europe/Berlin", "Australia/Lord_Howe", "Asia/Kathmandu"}
	clock := func(m int) string { return time.Date(0, 1, 1, m/60, m%60, 0, 0, time.UTC).Format("15:04") }
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).Unix()
	inside := 0
	for range 20000 {
		w := TimeWindow{Zone: zones[rng.IntN(len(zones))]}
		for d := range 7 {
			if rng.IntN(3) == 0 {
				w.Days = append(w.Days, weekdayNames[d])
			}
		}
		if rng.IntN(5) != 0 {
			from, to := rng.IntN(24*4)*15, rng.IntN(24*4)*15+15
			if from == to {
				to = (to + 60) % minutesPerDay
			}
			w.From, w.To = clock(from), clock(to)
			if to == minutesPerDay {
				w.To = "24:00"
			}
		}
		tw, field, msg := compileTimeWindow(w)
		if msg != "" {
			t.Fatalf("compileTimeWindow(%+v): %s: %s", w, field, msg)
		}
		at := time.Unix(base+rng.Int64N(366*24*3600), 0)
		want := refContains(w, at, tw.loc)
		if got := tw.contains(at); got != want {
			t.Fatalf("%s contains %s (%s there) = %v, reference says %v", tw, at.UTC(), at.In(tw.loc).Format("Mon 2006-01-02 15:04 MST"), got, want)
		}
		if want {
			inside++
		}
	}
	if inside < 2000 || inside > 18000 {
		t.Fatalf("%d of 20000 random times inside: the test does not exercise both outcomes", inside)
	}
}
