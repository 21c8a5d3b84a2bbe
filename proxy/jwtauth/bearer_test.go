package jwtauth_test

import (
	"testing"

	"meshgate/proxy/jwtauth"
)

func TestBearerToken(t *testing.T) {
	tests := []struct {
		header string
		want   string
		wantOK bool
	}{
		{"Bearer abc.def.ghi", "abc.def.ghi", true},
		{"bearer abc.def.ghi", "abc.def.ghi", true},
		{"BEARER abc.def.ghi", "abc.def.ghi", true},
		{"Bearer   abc.def.ghi  ", "abc.def.ghi", true},
		{"Bearer a-b_c~d+e/f==", "a-b_c~d+e/f==", true},
		{"Bearer", "", false},
		{"Bearer ", "", false},
		{"Bearer ==", "", false},
		{"Bearer a b", "", false},
		{"Bearer a,b", "", false},
		{"Bearer a=b", "", false},
		{"Bearer\tabc", "", false},
		{"Basic dXNlcjpwYXNz", "", false},
		{"Bearerabc", "", false},
		{"Token abc", "", false},
		{" Bearer abc", "", false},
		{"", "", false},
	}
	for _, tt := range tests {
		got, ok := jwtauth.BearerToken(tt.header)
		if got != tt.want || ok != tt.wantOK {
			t.Errorf("BearerToken(%q) = %q, %v; want %q, %v", tt.header, got, ok, tt.want, tt.wantOK)
		}
	}
}
