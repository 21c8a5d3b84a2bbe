// Package confval holds what meshgate's config files have in common: the
// value types they are written in (Duration), the error such a type
// returns for a value it cannot read (ValueError), and the reader that
// checks a whole file against its Go type, naming every unknown field and
// every unreadable value by its path (Check), then decodes it (Read).
//
// A value type of a config file, in any package, returns a *ValueError
// (Errorf) that says what is wrong and the fix; Check shows that message
// as it is, after the field's path, e.g.
//
//	timeouts.idle: 60 is not a duration; want a number with a unit, e.g. "5s" or "1m30s"
package confval
