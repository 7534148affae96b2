@echo off
rem One command for a new user on Windows: set up .venv, then run edgeskin.
rem   run.bat predict data\samples\ --threshold 0.4
rem   run.bat test
setlocal
cd /d "%~dp0"
set VENV=%~dp0.venv
if not exist "%VENV%\Scripts\python.exe" (
    py -3 -m venv "%VENV%" || python -m venv "%VENV%" || exit /b 1
    "%VENV%\Scripts\python.exe" -m pip install --quiet --upgrade pip
)
set EXTRAS=[train]
if /I "%~1"=="test" set EXTRAS=[train,app,test]
if /I "%~1"=="app" set EXTRAS=[train,app]
if /I "%~1"=="predict" set EXTRAS=
if /I "%~1"=="calibrate" set EXTRAS=
if /I "%~1"=="web" set EXTRAS=
if "%~1"=="" set EXTRAS=
if "%EXTRAS%"=="" (set STAMP=%VENV%\.installed-runtime) else (set STAMP=%VENV%\.installed%EXTRAS:,=-%)
if not exist "%STAMP%" (
    "%VENV%\Scripts\python.exe" -m pip install --quiet -e ".%EXTRAS%" || exit /b 1
    type nul > "%STAMP%"
)
set WEIGHTS=mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5
if "%KERAS_HOME%"=="" (set CACHE=%USERPROFILE%\.keras\models) else (set CACHE=%KERAS_HOME%\models)
if exist "..\shared\weights\%WEIGHTS%" if not exist "%CACHE%\%WEIGHTS%" (
    mkdir "%CACHE%" 2>nul
    copy /Y "..\shared\weights\%WEIGHTS%" "%CACHE%\" >nul
)
if /I "%~1"=="web" if not exist "web\node_modules" (
    call npm ci --prefix web --no-audit --no-fund --loglevel=error || exit /b 1
)
if /I "%~1"=="test" (
    if not exist "%~dp0.venv-mediapipe\.installed" (
        py -3 -m venv "%~dp0.venv-mediapipe" || python -m venv "%~dp0.venv-mediapipe" || exit /b 1
        "%~dp0.venv-mediapipe\Scripts\python.exe" -m pip install --quiet "mediapipe==1.2.2" -e . || exit /b 1
        type nul > "%~dp0.venv-mediapipe\.installed"
    )
    set EDGESKIN_MEDIAPIPE_PYTHON=%~dp0.venv-mediapipe\Scripts\python.exe
    "%VENV%\Scripts\python.exe" -m pytest -q -n 2 --dist worksteal
    exit /b %ERRORLEVEL%
)
if "%~1"=="" (
    "%VENV%\Scripts\edgeskin.exe" --help
) else (
    "%VENV%\Scripts\edgeskin.exe" %*
)
exit /b %ERRORLEVEL%
