package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/lmx-go/lmx"
)

// Exit codes, the same for every command (see exitCodesHelp).
const (
	exitOK          = 0
	exitError       = 1
	exitUsage       = 2
	exitLocked      = 3 // the lock is held by another: acquire without --wait, run --try
	exitTimeout     = 4 // --wait ran out
	exitUnreachable = 5 // no broker answers, or the connection to it was lost
	exitLeaseLost   = 6 // run: the lease ended while the command ran
)

const exitCodesHelp = `Exit codes:
  0  ok
  1  error
  2  usage error
  3  the lock is held by another (acquire without --wait, run --try)
  4  timed out waiting for the lock (--wait)
  5  the broker is unreachable, or the connection to it was lost
  6  run: the lease was lost while the command ran; the command was killed
  128+N  interrupted by signal N (130: SIGINT, 143: SIGTERM) while waiting
  run passes the command's own exit status through otherwise (126: it cannot
  be executed, 127: not found, 128+N: killed by signal N).
  acquire and run take --conflict-exit-code N to exit N instead of 3 or 4.
`

// A cli is one invocation of lmx: where it writes, what it reads from the
// environment, and the signals it receives. main wires it to the process;
// tests may wire it to buffers.
type cli struct {
	stdin   io.Reader
	stdout  io.Writer
	stderr  io.Writer
	getenv  func(string) string
	environ func() []string  // a run command's environment, before LMX_LOCK_*
	signals <-chan os.Signal // SIGINT and SIGTERM, as they arrive
	caught  atomic.Value     // the os.Signal that cut the command short, if one did
}

// A command is one of lmx's subcommands.
type command struct {
	name    string
	args    string // after "lmx NAME" in the usage line
	summary string
	help    string // what it does, after the usage line
	run     func(c *cli, cmd *command, args []string) error
}

func commandNames() []string {
	names := make([]string, len(commands))
	for i, cmd := range commands {
		names[i] = cmd.name
	}
	return names
}

// closest returns those of names nearest to name, if they are near enough
// to be a slip of the keyboard (two edits at most).
func closest(name string, names []string) []string {
	var best []string
	bestDist := 3
	for _, n := range names {
		switch d := editDistance(name, n); {
		case d < bestDist:
			best, bestDist = []string{n}, d
		case d == bestDist:
			best = append(best, n)
		}
	}
	return best
}

// didYouMean is the end of a message naming what was probably meant, with
// prefix before each name, or "" when nothing was.
func didYouMean(prefix string, names []string) string {
	if len(names) == 0 {
		return ""
	}
	return "; did you mean " + prefix + strings.Join(names, " or "+prefix) + "?"
}

// editDistance is the Levenshtein distance between a and b, in bytes.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

func lookup(name string) *command {
	for _, cmd := range commands {
		if cmd.name == name {
			return cmd
		}
	}
	return nil
}

// main runs the command that args name and returns its exit code.
func (c *cli) main(args []string) int {
	if len(args) == 0 {
		c.usage(c.stderr)
		return exitUsage
	}
	switch args[0] {
	case "help", "-h", "-help", "--help":
		if len(args) > 1 {
			if cmd := lookup(args[1]); cmd != nil {
				return c.report(cmd, cmd.run(c, cmd, []string{"--help"}))
			}
			fmt.Fprintf(c.stderr, "lmx: unknown command %q%s\n", args[1], didYouMean("", closest(args[1], commandNames())))
			return exitUsage
		}
		c.usage(c.stdout)
		return exitOK
	}
	cmd := lookup(args[0])
	if cmd == nil {
		fmt.Fprintf(c.stderr, "lmx: unknown command %q%s\nRun 'lmx help' for the list of commands.\n", args[0], didYouMean("", closest(args[0], commandNames())))
		return exitUsage
	}
	return c.report(cmd, cmd.run(c, cmd, args[1:]))
}

// exitErr is an error with the exit code it stands for; a nil err exits
// silently.
type exitErr struct {
	code int
	err  error
}

func (e *exitErr) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}

func (e *exitErr) Unwrap() error { return e.err }

func withCode(code int, err error) error { return &exitErr{code: code, err: err} }

func usageErrorf(format string, a ...any) error {
	return withCode(exitUsage, fmt.Errorf(format, a...))
}

// errInterrupted ends a command cut short by SIGINT or SIGTERM.
var errInterrupted = errors.New("interrupted")

// exitCode says which exit code err stands for.
func exitCode(err error) int {
	var e *exitErr
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &e):
		return e.code
	case errors.Is(err, lmx.ErrLocked):
		return exitLocked
	case errors.Is(err, lmx.ErrSessionLost), errors.Is(err, lmx.ErrClosed):
		// Calls fail so when the broker goes away under them.
		return exitUnreachable
	}
	return exitError
}

// report prints err, if any, and returns the exit code.
func (c *cli) report(cmd *command, err error) int {
	code := exitCode(err)
	if sig, ok := c.caught.Load().(os.Signal); ok && errors.Is(err, context.Canceled) {
		code = 128 + signalNumber(sig) // as a shell reports a command a signal ended
	}
	var e *exitErr
	if err == nil || errors.As(err, &e) && e.err == nil {
		return code
	}
	if errors.Is(err, context.Canceled) {
		err = errInterrupted
		if sig, ok := c.caught.Load().(os.Signal); ok {
			err = fmt.Errorf("%w by %s", errInterrupted, signalName(sig))
		}
	}
	fmt.Fprintf(c.stderr, "lmx %s: %v\n", cmd.name, err)
	if code == exitUsage {
		fmt.Fprintf(c.stderr, "Run 'lmx %s --help' for usage.\n", cmd.name)
	}
	return code
}

// interruptible returns a context cancelled by the first signal, which it
// records in c.caught.
func (c *cli) interruptible() (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		select {
		case sig := <-c.signals:
			c.caught.Store(sig)
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// cmdFlags are a command's flags, some of which can also be set from the
// environment.
type cmdFlags struct {
	*flag.FlagSet
	c         *cli
	cmd       *command
	envPrefix string            // of the variables: LMX_ for clients, LMX_BROKER_ for start
	env       map[string]string // flag name → environment variable
	list      map[string]bool   // flags whose variable is a comma-separated list
	conn      map[string]bool   // connection flags, listed apart in the help
}

func (c *cli) newFlags(cmd *command) *cmdFlags {
	f := &cmdFlags{
		FlagSet:   flag.NewFlagSet("lmx "+cmd.name, flag.ContinueOnError),
		c:         c,
		cmd:       cmd,
		envPrefix: "LMX_",
		env:       map[string]string{},
		list:      map[string]bool{},
		conn:      map[string]bool{},
	}
	f.SetOutput(io.Discard) // report prints parse errors
	f.Usage = func() {}     // parse prints the help when asked
	return f
}

// envName is the variable that sets flag name: the prefix and the name in
// upper case, dashes as underscores.
func envName(prefix, name string) string {
	return prefix + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// fromEnv lets the environment set the named flags, which must exist.
func (f *cmdFlags) fromEnv(names ...string) {
	for _, n := range names {
		if f.Lookup(n) == nil {
			panic("lmx: no flag " + n)
		}
		f.env[n] = envName(f.envPrefix, n)
	}
}

// parse parses args, where flags and positional arguments may come in any
// order, and then sets the flags not given from their environment
// variables. "--" ends the flags. When stopAfter >= 0, the positional
// argument after the first stopAfter ones, or whatever follows "--", starts
// rest, which parse leaves alone (a command and its own arguments);
// otherwise what follows "--" is positional. A request for help prints it
// and returns an exitErr with code 0. A flag it does not know, or a value a
// flag cannot take, is a usage error that says what was expected.
func (f *cmdFlags) parse(args []string, stopAfter int) (pos, rest []string, err error) {
scan:
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			if stopAfter >= 0 {
				rest = args[i+1:]
			} else {
				pos = append(pos, args[i+1:]...)
			}
			break scan
		case len(a) < 2 || a[0] != '-':
			if stopAfter >= 0 && len(pos) == stopAfter {
				rest = args[i:]
				break scan
			}
			pos = append(pos, a)
		default:
			name, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
			if name == "h" || name == "help" {
				f.printHelp(f.c.stdout)
				return nil, nil, withCode(exitOK, nil)
			}
			fl := f.Lookup(name)
			if fl == nil {
				return nil, nil, f.unknownFlag(name)
			}
			if b, ok := fl.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
				if !hasValue {
					value = "true"
				}
			} else if !hasValue {
				if i+1 == len(args) {
					return nil, nil, usageErrorf("--%s needs a value: %s", name, expects(fl))
				}
				i++
				value = args[i]
			}
			if err := f.Set(name, value); err != nil {
				return nil, nil, usageErrorf("--%s %q: %s", name, value, expects(fl))
			}
		}
	}
	set := map[string]bool{}
	f.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	for name, v := range f.env {
		val := f.c.getenv(v)
		if set[name] || val == "" {
			continue
		}
		vals := []string{val}
		if f.list[name] {
			vals = strings.Split(val, ",")
		}
		for _, s := range vals {
			if s = strings.TrimSpace(s); s == "" {
				continue
			}
			if err := f.Set(name, s); err != nil {
				return nil, nil, usageErrorf("%s=%q: %s", v, val, expects(f.Lookup(name)))
			}
		}
	}
	return pos, rest, nil
}

// parseArgs parses the args of a command that runs no command of its own,
// refusing more than most positional arguments.
func (f *cmdFlags) parseArgs(args []string, most int) ([]string, error) {
	pos, _, err := f.parse(args, -1)
	if err != nil {
		return nil, err
	}
	if len(pos) > most {
		return nil, usageErrorf("unexpected argument %q", pos[most])
	}
	return pos, nil
}

// unknownFlag is the error of a flag the command does not have: the one it
// probably meant, or the flags it has.
func (f *cmdFlags) unknownFlag(name string) error {
	var names []string
	f.VisitAll(func(fl *flag.Flag) { names = append(names, fl.Name) })
	if near := closest(name, names); len(near) > 0 {
		return usageErrorf("unknown flag --%s%s", name, didYouMean("--", near))
	}
	for i, n := range names {
		names[i] = "--" + n
	}
	return usageErrorf("unknown flag --%s; lmx %s takes %s", name, f.cmd.name, strings.Join(names, ", "))
}

// expects says what values fl takes.
func expects(fl *flag.Flag) string {
	if e, ok := fl.Value.(interface{ expects() string }); ok {
		return e.expects()
	}
	g, _ := fl.Value.(flag.Getter)
	if g == nil {
		return "not a value it takes"
	}
	switch g.Get().(type) {
	case time.Duration:
		return "not a duration, such as 30s, 5m or 1h30m"
	case int:
		return "not a whole number"
	case bool:
		return "not true or false"
	}
	return "not a value it takes"
}

// printHelp prints the command's help: usage line, description, flags.
func (f *cmdFlags) printHelp(w io.Writer) {
	cmd := f.cmd
	fmt.Fprintf(w, "Usage: lmx %s %s\n\n%s", cmd.name, cmd.args, cmd.help)
	var own, conn []*flag.Flag
	f.VisitAll(func(fl *flag.Flag) {
		if f.conn[fl.Name] {
			conn = append(conn, fl)
		} else {
			own = append(own, fl)
		}
	})
	f.printFlags(w, "Flags", own)
	f.printFlags(w, "Connection flags", conn)
	if len(conn) > 0 {
		fmt.Fprintf(w, "\n%s\n", addrHelp)
	}
	fmt.Fprintf(w, "\n%s", exitCodesHelp)
}

func (f *cmdFlags) printFlags(w io.Writer, title string, flags []*flag.Flag) {
	if len(flags) == 0 {
		return
	}
	sort.Slice(flags, func(i, j int) bool { return flags[i].Name < flags[j].Name })
	fmt.Fprintf(w, "\n%s:\n", title)
	specs := make([]string, len(flags))
	width := 0
	for i, fl := range flags {
		name, _ := flag.UnquoteUsage(fl)
		switch name {
		case "duration":
			name = "D"
		case "int", "uint":
			name = "N"
		case "string", "value":
			name = "S"
		}
		specs[i] = "--" + fl.Name
		if name != "" {
			specs[i] += " " + name
		}
		width = max(width, len(specs[i]))
	}
	for i, fl := range flags {
		_, usage := flag.UnquoteUsage(fl)
		if d := fl.DefValue; d != "" && d != "0" && d != "0s" && d != "false" {
			usage += " (default " + d + ")"
		}
		if v, ok := f.env[fl.Name]; ok {
			if f.list[fl.Name] {
				usage += " [$" + v + ", comma-separated]"
			} else {
				usage += " [$" + v + "]"
			}
		}
		if width > 24 { // the usage goes under the flag
			fmt.Fprintf(w, "  %s\n", specs[i])
			wrap(w, usage, 8, 79)
		} else {
			fmt.Fprintf(w, "  %-*s  ", width, specs[i])
			wrap(w, usage, width+4, 79)
		}
	}
}

// wrap writes text in lines up to cols wide, each after the first indented
// by indent spaces; the caller wrote the first line's indentation.
func wrap(w io.Writer, text string, indent, cols int) {
	col := indent
	for i, word := range strings.Fields(text) {
		if i > 0 && col+1+len(word) > cols {
			fmt.Fprintf(w, "\n%*s", indent, "")
			col = indent
		} else if i > 0 {
			io.WriteString(w, " ")
			col++
		}
		io.WriteString(w, word)
		col += len(word)
	}
	io.WriteString(w, "\n")
}

// listFlag is a flag that may be repeated.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

func (c *cli) usage(w io.Writer) {
	fmt.Fprint(w, `Usage: lmx COMMAND [ARGUMENTS] [FLAGS]

lmx runs a lock broker and takes, releases, inspects and watches its locks
from the shell, on one machine or across many.

Commands:
`)
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	for _, cmd := range commands {
		fmt.Fprintf(tw, "  %s %s\t%s\n", cmd.name, cmd.args, cmd.summary)
	}
	tw.Flush()
	fmt.Fprintf(w, `
Run 'lmx COMMAND --help' for a command's flags. Every client command takes
--addr URL ($LMX_ADDR), --token S ($LMX_TOKEN), TLS flags and --json, for
output as JSON objects (one per line for ls and watch).

%s

%s`, addrHelp, exitCodesHelp)
}
