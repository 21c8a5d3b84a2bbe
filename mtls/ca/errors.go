package ca

import "fmt"

// Error is an error of the CA: Op says what failed ("init DIR", "load
// DIR", "serve"), Err why. A caller that names the directory its own way
// (a command naming its flag) prints Err alone.
type Error struct {
	Op  string
	Err error
}

func (e *Error) Error() string { return "mtls/ca: " + e.Op + ": " + e.Err.Error() }

// Unwrap returns Err.
func (e *Error) Unwrap() error { return e.Err }

// TokensError is a bootstrap tokens file that cannot be used: unreadable
// (Line 0) or wrong at Line.
type TokensError struct {
	Path string
	Line int
	Err  error
}

func (e *TokensError) Error() string {
	if e.Line == 0 {
		return "tokens file: " + e.Err.Error()
	}
	return fmt.Sprintf("tokens file %s, %s", e.Path, e.Where())
}

// Where is the error without the file's name: Err, after its line.
func (e *TokensError) Where() string {
	if e.Line == 0 {
		return e.Err.Error()
	}
	return fmt.Sprintf("line %d: %v", e.Line, e.Err)
}

// Unwrap returns Err.
func (e *TokensError) Unwrap() error { return e.Err }
