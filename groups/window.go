package groups

import (
	"fmt"
	"strings"
	"time"

	// Embedded zone data: a policy that names "Asia/Seoul" must mean the
	// same on a minimal container without /usr/share/zoneinfo.
	_ "time/tzdata"
)

// TimeWindow is one entry of Rule.Time: days of the week, a daily from–to
// range and the time zone both are read in. The rule's time condition
// matches when the request time falls in any of its windows.
type TimeWindow struct {
	// Days lists weekdays ("mon" … "sun") and ranges of them ("mon-fri";
	// a range may wrap: "fri-mon" is fri, sat, sun, mon). Empty means
	// every day. For an overnight window the day named is the day the
	// window starts.
	Days []string `yaml:"days,omitempty"`
	// From and To are wall-clock times "HH:MM" (24 h) in Zone; From is
	// inclusive, To exclusive, and To may be "24:00". Both empty means all
	// day. To earlier than From makes an overnight window: days [fri],
	// 22:00–06:00 is Friday 22:00 to Saturday 06:00.
	From string `yaml:"from"`
	To   string `yaml:"to"`
	// Zone is an IANA time zone name such as "Asia/Seoul" or "UTC". It is
	// required: a window in the server's local time would change meaning
	// when the server moves.
	Zone string `yaml:"zone"`
}

// timeWindow is a compiled TimeWindow. Times are minutes after local
// midnight. Evaluating on the wall clock is what an author means by
// "08:00–20:00": on a daylight-saving change the skipped hour simply never
// occurs and the repeated hour is inside the window both times.
type timeWindow struct {
	days     uint8 // bit d set: time.Weekday d is listed
	from, to int   // minutes after midnight; to < from is overnight
	allDay   bool  // no from/to (or 00:00–24:00): only the day counts
	loc      *time.Location
	text     string // for String
}

const minutesPerDay = 24 * 60

// weekdayNames are the accepted day names, indexed by time.Weekday.
var weekdayNames = [7]string{"sun", "mon", "tue", "wed", "thu", "fri", "sat"}

// compileTimeWindow validates w and compiles it. On error, field names the
// bad field ("days[1]", "from", "to", "zone" or "" for the window as a
// whole) and msg says what is wrong.
func compileTimeWindow(w TimeWindow) (tw timeWindow, field, msg string) {
	switch w.Zone {
	case "":
		return timeWindow{}, "zone", `required: an IANA time zone such as "Asia/Seoul" or "UTC"`
	case "Local":
		// time.LoadLocation accepts it, but it is whatever the server's
		// zone happens to be.
		return timeWindow{}, "zone", `"Local" depends on the server; name the zone, such as "Asia/Seoul" or "UTC"`
	}
	loc, err := time.LoadLocation(w.Zone)
	if err != nil {
		return timeWindow{}, "zone", fmt.Sprintf("unknown time zone %q: use an IANA name such as %q or %q", w.Zone, "Asia/Seoul", "UTC")
	}
	tw.loc = loc

	if len(w.Days) == 0 {
		tw.days = 1<<7 - 1
	}
	for i, d := range w.Days {
		bits, msg := parseDays(d)
		if msg != "" {
			return timeWindow{}, fmt.Sprintf("days[%d]", i), msg
		}
		tw.days |= bits
	}

	switch {
	case w.From == "" && w.To == "":
		tw.allDay = true
	case w.From == "":
		return timeWindow{}, "from", `required when "to" is set (leave both out for all day)`
	case w.To == "":
		return timeWindow{}, "to", `required when "from" is set (leave both out for all day)`
	default:
		var msg string
		if tw.from, msg = parseClock(w.From, false); msg != "" {
			return timeWindow{}, "from", msg
		}
		if tw.to, msg = parseClock(w.To, true); msg != "" {
			return timeWindow{}, "to", msg
		}
		if tw.from == tw.to {
			return timeWindow{}, "to", fmt.Sprintf(`equals "from" (%s), which would be an empty window; leave both out for all day`, w.From)
		}
		if tw.from == 0 && tw.to == minutesPerDay {
			tw.allDay = true
		}
	}
	tw.text = tw.describe(w)
	return tw, "", ""
}

// parseDays parses one entry of TimeWindow.Days into weekday bits.
func parseDays(s string) (uint8, string) {
	first, last, isRange := strings.Cut(s, "-")
	a, msg := parseDay(first, s)
	if msg != "" {
		return 0, msg
	}
	if !isRange {
		return 1 << a, ""
	}
	b, msg := parseDay(last, s)
	if msg != "" {
		return 0, msg
	}
	if a == b {
		return 0, fmt.Sprintf("%q is a range of one day: write %q", s, weekdayNames[a])
	}
	var bits uint8
	for d := a; ; d = (d + 1) % 7 {
		bits |= 1 << d
		if d == b {
			return bits, ""
		}
	}
}

// parseDay parses one day name; entry is the whole Days entry, for the
// message.
func parseDay(s, entry string) (int, string) {
	for d, name := range weekdayNames {
		if s == name {
			return d, ""
		}
	}
	// "Mon", "monday", "Tues": clearly meant, but write it one way.
	lower := strings.ToLower(s)
	for d := range weekdayNames {
		if full := strings.ToLower(time.Weekday(d).String()); len(lower) >= 3 && strings.HasPrefix(full, lower) {
			return 0, fmt.Sprintf("%q: write the day as %q", entry, weekdayNames[d])
		}
	}
	return 0, fmt.Sprintf(`%q is not a day: use mon, tue, wed, thu, fri, sat, sun or a range such as "mon-fri"`, entry)
}

// parseClock parses "HH:MM" into minutes after midnight; "24:00" only if
// end is true.
func parseClock(s string, end bool) (int, string) {
	bad := func() (int, string) {
		return 0, fmt.Sprintf(`%q is not a time of day: write HH:MM on a 24-hour clock, such as "08:00" or "20:30"`, s)
	}
	if len(s) != 5 || s[2] != ':' {
		return bad()
	}
	for _, i := range []int{0, 1, 3, 4} {
		if s[i] < '0' || s[i] > '9' {
			return bad()
		}
	}
	h := int(s[0]-'0')*10 + int(s[1]-'0')
	m := int(s[3]-'0')*10 + int(s[4]-'0')
	switch {
	case h == 24 && m == 0 && end:
		return minutesPerDay, ""
	case h == 24 && m == 0:
		return 0, `"24:00" is only allowed in "to": write "00:00"`
	case h > 23 || m > 59:
		return bad()
	}
	return h*60 + m, ""
}

// contains reports whether t, read on the wall clock of the window's zone,
// falls in the window.
func (tw timeWindow) contains(t time.Time) bool {
	lt := t.In(tw.loc)
	day := lt.Weekday()
	if tw.allDay {
		return tw.days&(1<<day) != 0
	}
	m := lt.Hour()*60 + lt.Minute()
	if tw.from < tw.to {
		return tw.days&(1<<day) != 0 && tw.from <= m && m < tw.to
	}
	// Overnight: the evening part belongs to today's window, the morning
	// part to the window that started yesterday.
	yesterday := (day + 6) % 7
	return (tw.days&(1<<day) != 0 && m >= tw.from) || (tw.days&(1<<yesterday) != 0 && m < tw.to)
}

// String describes the window for explain output and deny reasons, such as
// "mon-fri 08:00–20:00 Asia/Seoul".
func (tw timeWindow) String() string { return tw.text }

func (tw timeWindow) describe(w TimeWindow) string {
	hours := "all day"
	if !tw.allDay || w.From != "" {
		hours = w.From + "–" + w.To
	}
	return describeDays(tw.days) + " " + hours + " " + tw.loc.String()
}

// describeDays writes day bits as runs in week order (mon first), such as
// "mon-fri", "mon,wed,fri" or "fri-mon".
func describeDays(bits uint8) string {
	if bits == 1<<7-1 {
		return "every day"
	}
	// i counts days from any origin; day i is weekday i mod 7.
	day := func(i int) int { return (i%7 + 7) % 7 }
	set := func(i int) bool { return bits&(1<<day(i)) != 0 }
	// Start at Monday unless a run wraps through Sunday into Monday: then
	// start where that run starts, so that it prints as one range.
	start := int(time.Monday)
	for set(start) && set(start-1) {
		start--
	}
	var parts []string
	for i := start; i < start+7; i++ {
		if !set(i) {
			continue
		}
		j := i
		for j+1 < start+7 && set(j+1) {
			j++
		}
		if j == i {
			parts = append(parts, weekdayNames[day(i)])
		} else {
			parts = append(parts, weekdayNames[day(i)]+"-"+weekdayNames[day(j)])
		}
		i = j
	}
	return strings.Join(parts, ",")
}
