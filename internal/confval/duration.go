package confval

import (
	"encoding/json"
	"time"
)

// Duration is a time.Duration written as a Go duration string, "5ms",
// "5s", "1m30s", "1h".
type Duration time.Duration

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// String formats d like time.Duration.
func (d Duration) String() string { return time.Duration(d).String() }

// MarshalJSON writes d as a duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// UnmarshalJSON reads a duration string. A bare number is refused: it
// would be ambiguous (seconds? milliseconds? nanoseconds?).
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return Errorf("%s is not a duration; want a number with a unit, e.g. \"5s\" or \"1m30s\"", b)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return Errorf("%q is not a duration; want a number with a unit, e.g. \"5s\" or \"1m30s\"", s)
	}
	*d = Duration(v)
	return nil
}
