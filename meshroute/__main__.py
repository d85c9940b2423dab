from meshroute.entry import main

main()
