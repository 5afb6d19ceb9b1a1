"""A hostile driver: closes parts of its work directory to everyone, itself and its supervisor
included (chmod 000), links to a directory of its uid outside it (argv[1]), then exits."""
import os, sys, time
os.makedirs("a/b/c")
for d in ["a/b/c", "a/b", "a"]:
    with open(os.path.join(d, "f"), "w") as f:
        f.write("x")
os.symlink(sys.argv[1], "a/b/link")
for d in ["a/b/c", "a/b", "a"]:
    os.chmod(d, 0)
print("planted", flush=True)
time.sleep(3)
