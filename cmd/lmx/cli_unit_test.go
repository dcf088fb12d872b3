package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/lmx-go/lmx"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// testCLI is a cli writing to buffers, with env as its environment.
func testCLI(env map[string]string) (*cli, *bytes.Buffer, *bytes.Buffer) {
	var out, errOut bytes.Buffer
	return &cli{
		stdout:  &out,
		stderr:  &errOut,
		getenv:  func(k string) string { return env[k] },
		environ: func() []string { return nil },
		signals: make(chan os.Signal),
	}, &out, &errOut
}

func TestParseInterspersed(t *testing.T) {
	c, _, _ := testCLI(nil)
	f := c.newFlags(&command{name: "x"})
	ttl := f.Duration("ttl", time.Second, "")
	quiet := f.Bool("q", false, "")

	pos, rest, err := f.parse([]string{"a", "--ttl", "5s", "b", "-q", "--", "-c", "d"}, -1)
	require.NoError(t, err)
	assert.Equal(t, []string{"a", "b", "-c", "d"}, pos)
	assert.Nil(t, rest)
	assert.Equal(t, 5*time.Second, *ttl)
	assert.True(t, *quiet)

	// With stopAfter, the command starts at the next positional or after --.
	for _, args := range [][]string{
		{"key", "--ttl=2s", "cmd", "--ttl", "x"},
		{"--ttl", "2s", "key", "--", "cmd", "--ttl", "x"},
	} {
		f := c.newFlags(&command{name: "run"})
		ttl := f.Duration("ttl", 0, "")
		pos, rest, err := f.parse(args, 1)
		require.NoError(t, err, "%v", args)
		assert.Equal(t, []string{"key"}, pos)
		assert.Equal(t, []string{"cmd", "--ttl", "x"}, rest)
		assert.Equal(t, 2*time.Second, *ttl)
	}

	_, _, err = c.newFlags(&command{name: "x"}).parse([]string{"--nope"}, -1)
	assert.Equal(t, exitUsage, exitCode(err))
}

// TestParsePositional pins what parseArgs, parseKey and parsePrefix return
// and refuse: the messages the client commands print.
func TestParsePositional(t *testing.T) {
	c, _, _ := testCLI(nil)
	parse := map[string]func(f *cmdFlags, args []string) (string, error){
		"none": func(f *cmdFlags, args []string) (string, error) {
			_, err := f.parseArgs(args, 0)
			return "", err
		},
		"key":    (*cmdFlags).parseKey,
		"prefix": (*cmdFlags).parsePrefix,
	}
	for _, tt := range []struct {
		parser string
		args   []string
		want   string // the argument returned, or the usage error
	}{
		{"none", nil, ""},
		{"none", []string{"--json"}, ""},
		{"none", []string{"a", "b"}, `unexpected argument "a"`},
		{"key", []string{"k"}, "k"},
		{"key", []string{"--json", "--", "-k"}, "-k"},
		{"key", nil, "KEY is missing"},
		{"key", []string{"k", "x"}, `unexpected argument "x"`},
		{"prefix", nil, ""},
		{"prefix", []string{"p/"}, "p/"},
		{"prefix", []string{"p/", "q/"}, `unexpected argument "q/"`},
	} {
		f := c.newFlags(&command{name: "x"})
		f.Bool("json", false, "")
		got, err := parse[tt.parser](f, tt.args)
		if err != nil {
			assert.Equal(t, exitUsage, exitCode(err), "%s %q", tt.parser, tt.args)
			got = err.Error()
		}
		assert.Equal(t, tt.want, got, "%s %q", tt.parser, tt.args)
	}
}

func TestParseHelp(t *testing.T) {
	c, out, _ := testCLI(nil)
	f := c.newFlags(&command{name: "x", args: "KEY", help: "Does x.\n"})
	f.Duration("ttl", 30*time.Second, "how long `D`")
	f.fromEnv("ttl")
	_, _, err := f.parse([]string{"k", "--help"}, -1)
	assert.Equal(t, exitOK, exitCode(err))
	assert.Contains(t, out.String(), "Usage: lmx x KEY\n\nDoes x.\n")
	assert.Contains(t, out.String(), "--ttl D  how long D (default 30s) [$LMX_TTL]")
}

func TestParseEnv(t *testing.T) {
	c, _, _ := testCLI(map[string]string{
		"LMX_BROKER_LISTEN":  "unix:///a, tcp://b:1,",
		"LMX_BROKER_TOKEN":   "from-env",
		"LMX_BROKER_METRICS": ":6972",
		"LMX_TOKEN":          "a client's",
	})
	f := c.newFlags(&command{name: "start"})
	sf := addStartFlags(f)
	_, _, err := f.parse([]string{"--metrics", ":6973"}, -1)
	require.NoError(t, err)
	assert.Equal(t, listFlag{"unix:///a", "tcp://b:1"}, sf.listen)
	assert.Equal(t, "from-env", sf.token)
	assert.Equal(t, ":6973", sf.metrics, "a flag given wins over the environment")

	c, _, _ = testCLI(map[string]string{"LMX_BROKER_MAX_SESSIONS": "many"})
	f = c.newFlags(&command{name: "start"})
	addStartFlags(f)
	_, _, err = f.parse(nil, -1)
	assert.Equal(t, exitUsage, exitCode(err))
	assert.ErrorContains(t, err, "LMX_BROKER_MAX_SESSIONS")
	assert.ErrorContains(t, err, "not a whole number")
}

func TestEveryStartFlagHasItsVariable(t *testing.T) {
	c, _, _ := testCLI(nil)
	f := c.newFlags(&command{name: "start"})
	addStartFlags(f)
	f.VisitAll(func(fl *flag.Flag) { assert.Equal(t, envName("LMX_BROKER_", fl.Name), f.env[fl.Name], fl.Name) })
}

func TestDefaultAddrs(t *testing.T) {
	env := map[string]string{"XDG_RUNTIME_DIR": "/run/user/1000"}
	getenv := func(k string) string { return env[k] }
	assert.Equal(t, []string{"unix:///run/user/1000/lmx.sock", "tcp://127.0.0.1:6971"}, defaultAddrs(getenv))
	delete(env, "XDG_RUNTIME_DIR")
	assert.Equal(t, fmt.Sprintf("/tmp/lmx-%d.sock", os.Getuid()), defaultSocket(getenv))
}

func TestExitCode(t *testing.T) {
	for err, code := range map[error]int{
		nil:                                     exitOK,
		errors.New("x"):                         exitError,
		lmx.ErrLocked:                           exitLocked,
		fmt.Errorf("a: %w", lmx.ErrSessionLost): exitUnreachable,
		withCode(exitTimeout, context.DeadlineExceeded): exitTimeout,
		withCode(42, nil):  42,
		usageErrorf("bad"): exitUsage,
	} {
		assert.Equal(t, code, exitCode(err), "%v", err)
	}
	assert.False(t, unreachable(lmx.ErrAuth))
	assert.False(t, unreachable(fmt.Errorf("x: %w", lmx.ErrProtocol)))
	assert.True(t, unreachable(errors.New("connect: connection refused")))
}

func TestMainUsage(t *testing.T) {
	c, out, errOut := testCLI(nil)
	assert.Equal(t, exitUsage, c.main(nil))
	assert.Contains(t, errOut.String(), "Usage: lmx COMMAND")
	assert.Equal(t, exitOK, c.main([]string{"help"}))
	assert.Contains(t, out.String(), "Exit codes:")
	assert.Equal(t, exitUsage, c.main([]string{"help", "nope"}))
	assert.Equal(t, exitUsage, c.main([]string{"nope"}))
}

func TestShellQuote(t *testing.T) {
	assert.Equal(t, "jobs/a-1", shellQuote("jobs/a-1"))
	assert.Equal(t, `'it'\''s here'`, shellQuote("it's here"))
	assert.Equal(t, "''", shellQuote(""))
}
