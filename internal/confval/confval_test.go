package confval

import (
	"encoding/json"
	"testing"
	"time"
)

// TestDuration: a duration string is read and written as it is; a bare
// number or a word is refused with a *ValueError that names the fix.
func TestDuration(t *testing.T) {
	var d Duration
	if err := json.Unmarshal([]byte(`"1m30s"`), &d); err != nil || d.D() != 90*time.Second {
		t.Fatalf("1m30s: %v, %v", d, err)
	}
	if b, err := json.Marshal(Duration(5 * time.Millisecond)); err != nil || string(b) != `"5ms"` {
		t.Errorf("marshal 5ms: %s, %v", b, err)
	}
	if s := Duration(time.Hour).String(); s != "1h0m0s" {
		t.Errorf("String: %s", s)
	}
	for doc, want := range map[string]string{
		`5`:         `5 is not a duration; want a number with a unit, e.g. "5s" or "1m30s"`,
		`"forever"`: `"forever" is not a duration; want a number with a unit, e.g. "5s" or "1m30s"`,
	} {
		err := json.Unmarshal([]byte(doc), &d)
		if _, ok := err.(*ValueError); !ok || err.Error() != want {
			t.Errorf("%s: %v (%T), want *ValueError %s", doc, err, err, want)
		}
	}
}

// TestCheck: every unknown field and unreadable value is named by its
// path, a ValueError's message shown as it is.
func TestCheck(t *testing.T) {
	type inner struct {
		Wait Duration `json:"wait"`
	}
	type doc struct {
		Port  uint16           `json:"port"`
		Inner inner            `json:"inner"`
		List  []inner          `json:"list,omitempty"`
		Ports map[uint16]inner `json:"ports"`
	}
	err := Check[doc]([]byte(`
port: 70000
inner: {wait: 3, extra: 1}
list: [{wait: 1s}, {wait: soon}]
ports: {x: {}}
`))
	want := `inner.extra: unknown field; want one of wait
inner.wait: 3 is not a duration; want a number with a unit, e.g. "5s" or "1m30s"
list[1].wait: "soon" is not a duration; want a number with a unit, e.g. "5s" or "1m30s"
port: 70000 is not a port; want a number from 0 to 65535
ports.x: "x" is not a port; want a number from 1 to 65535`
	if err == nil || err.Error() != want {
		t.Errorf("Check:\n%v\nwant:\n%s", err, want)
	}
	if err := Check[doc]([]byte("port: 80\ninner: {wait: 1s}\n")); err != nil {
		t.Errorf("a good document: %v", err)
	}
}

// TestReadBoolKeys: a key YAML 1.1 reads as a boolean (an unquoted on) is
// read as the field it was written as, in Check's paths too; a section
// with no such field still refuses it.
func TestReadBoolKeys(t *testing.T) {
	type retries struct {
		On       []string `json:"on"`
		Attempts int      `json:"attempts"`
	}
	type doc struct {
		Retries retries `json:"retries"`
		Name    string  `json:"name"`
	}
	v := doc{Name: "kept"}
	if err := Read([]byte("retries: {on: [reset], attempts: 2}\n"), &v); err != nil {
		t.Fatal(err)
	}
	if len(v.Retries.On) != 1 || v.Retries.On[0] != "reset" || v.Retries.Attempts != 2 || v.Name != "kept" {
		t.Errorf("read %+v", v)
	}
	err := Check[doc]([]byte("retries: {on: [1, {}]}\nyes: 1\n"))
	want := `retries.on[0]: 1 is not a string
retries.on[1]: a section is not a string
true: unknown field; want one of retries, name`
	if err == nil || err.Error() != want {
		t.Errorf("Check:\n%v\nwant:\n%s", err, want)
	}
	v = doc{}
	if err := Read([]byte("retries: {attempts: x}\n"), &v); err == nil || err.Error() != `retries.attempts: "x": json: cannot unmarshal string into Go value of type int` {
		t.Errorf("Read of a bad value: %v", err)
	}
}
