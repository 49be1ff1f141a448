# fake (tests): the package lives in ./transformer_maskgit
