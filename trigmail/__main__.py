from trigmail.cli import main

main()
