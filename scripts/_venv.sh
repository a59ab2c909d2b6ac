# Sourced by demo.sh and test.sh: create or reuse the project's virtual environment.
# NAT_VENV picks the environment folder (default .venv); NAT_PYTHON the interpreter that creates it.
venv="${NAT_VENV:-.venv}"
if [ ! -x "$venv/bin/python" ]; then
    echo "creating the virtual environment $venv"
    "${NAT_PYTHON:-python3}" -m venv "$venv"
fi

# pip install into the environment, quietly; fails the script when pip fails.
pip_install() {
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "$@" 2>&1 \
        | { grep -v "^WARNING: Location" || true; }
}

pip_install --upgrade pip
