#!/usr/bin/env bash
# Git pre-commit hook: refuse a commit that adds or changes a model checkpoint the gate does not pass.
# Install:  cp examples/ci/pre-commit-hook.sh .git/hooks/pre-commit && chmod +x .git/hooks/pre-commit
# Policy:   set TEACHER_AUDIT_RULES to your reviewed rules file (default: the packaged policy).
set -euo pipefail

rules_args=()
if [ -n "${TEACHER_AUDIT_RULES:-}" ]; then
  rules_args=(--rules "$TEACHER_AUDIT_RULES")
fi

# staged model files, NUL-separated (safe for any file name)
mapfile -d '' files < <(git diff --cached --name-only --diff-filter=AMR -z -- \
  '*.pt' '*.pth' '*.ckpt' '*.bin' '*.safetensors' '*.onnx')
[ "${#files[@]}" -eq 0 ] && exit 0

echo "teacher-audit: auditing ${#files[@]} staged checkpoint(s)..." >&2
set +e
teacher-audit scan "${rules_args[@]}" --md .git/teacher-audit-last.md -- "${files[@]}"
code=$?
set -e
case "$code" in
  0) exit 0 ;;
  1) echo "teacher-audit: findings at or above the fail level; commit refused (report: .git/teacher-audit-last.md)" >&2 ;;
  2) echo "teacher-audit: error while auditing; commit refused" >&2 ;;
  3) echo "teacher-audit: a checkpoint could not be audited (unsupported, refused pickle, unknown arch); commit refused" >&2 ;;
  *) echo "teacher-audit: usage error ($code)" >&2 ;;
esac
exit "$code"
