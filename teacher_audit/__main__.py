from teacher_audit.cli import main

main()
