// Command lmx is the lmx lock broker's command line: it runs a broker, and
// takes, releases, inspects and watches its locks from the shell.
//
// Usage:
//
//	lmx start [--listen URL]...          run a broker until SIGINT or SIGTERM
//	lmx acquire KEY [--ttl D] [--wait D] take a lock that outlives the command
//	lmx extend KEY ID [--ttl D]          renew it from anywhere
//	lmx release KEY ID | KEY --force     release it from anywhere
//	lmx run KEY [--try] -- CMD ARGS...   hold a lock while a command runs
//	lmx ls [PREFIX]                      list the keys held or awaited
//	lmx inspect KEY                      show a key's holders and waiters
//	lmx watch [PREFIX]                   print lock events as they happen
//	lmx ping                             time a round trip to the broker
//	lmx stats                            show the broker's counts
//	lmx version                          say which release this is
//	lmx demo                             show the broker at work
//
// 'lmx help' and 'lmx COMMAND --help' say more: flags, environment
// variables, the default addresses and the exit codes.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	c := &cli{
		stdin:   os.Stdin,
		stdout:  os.Stdout,
		stderr:  os.Stderr,
		getenv:  os.Getenv,
		environ: os.Environ,
		signals: sigs,
	}
	os.Exit(c.main(os.Args[1:]))
}
