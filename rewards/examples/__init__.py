"""Example user rewards, loadable with `rewards.resolve("rewards/examples/<file>.py:<fn>")`."""
